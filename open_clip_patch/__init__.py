"""FastCLIP overlay for OpenCLIP 3.3.0.

All FastCLIP logic lives here; the patches in ``patches/`` only add the hooks that call it.
Importing the package registers the overlay's model configs (e.g. ``fastclip-tiny-vit``) with
OpenCLIP's model zoo, so ``--model fastclip-tiny-vit`` works in the patched trainer.
"""
from pathlib import Path

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"


def _register_model_configs():
    import open_clip

    open_clip.add_model_config(MODEL_CONFIG_DIR)


_register_model_configs()
