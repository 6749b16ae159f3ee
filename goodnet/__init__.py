"""goodnet: find and remove backdoors in neural networks.

The toolkit behind the CSAW-HackML-2020 lab: load a BadNet, prune it, build a
GoodNet that answers class N+1 for inputs it judges poisoned, gate it with
STRIP, fine-prune it and evaluate any submitted model.

Example:
    >>> import goodnet
    >>> classifier = goodnet.load_model("models/bd_net.h5", scale="raw")
    >>> clean = goodnet.load_h5("data/valid.h5")
    >>> classifier.predict(clean.images[:8])
"""

import logging

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())


def __getattr__(name):
    # Lazy re-exports: importing goodnet must not import TensorFlow.
    lazy = {
        "load_h5": ("goodnet.data", "load_h5"),
        "save_h5": ("goodnet.data", "save_h5"),
        "load_image": ("goodnet.data", "load_image"),
        "LabData": ("goodnet.data", "LabData"),
        "DataError": ("goodnet.data", "DataError"),
        "load_model": ("goodnet.models", "load_model"),
        "save_model": ("goodnet.models", "save_model"),
        "build_deepid": ("goodnet.models", "build_deepid"),
        "Classifier": ("goodnet.models", "Classifier"),
        "ModelError": ("goodnet.models", "ModelError"),
        "evaluate": ("goodnet.metrics", "evaluate"),
    }
    if name in lazy:
        import importlib

        module_name, attribute = lazy[name]
        return getattr(importlib.import_module(module_name), attribute)
    raise AttributeError(f"module 'goodnet' has no attribute {name!r}")
