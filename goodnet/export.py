"""Export a GoodNet as files a Keras 2 grader loads without goodnet (``goodnet export``).

goodnet's GoodNet file holds Keras 3 layers (the combiner, the STRIP gate)
and two nested networks; the export writes the networks as plain Keras 2
dialect ``.h5`` files (:mod:`goodnet.keras2`) and the rest as ``gate.json``
(and ``strip_bank.npy``), which the README's ``load_goodnet`` recombines.
"""

import json
import os

import numpy as np

from goodnet.errors import ModelError
from goodnet.models import SCALES

EXPORT_FORMAT = "goodnet-export/1"
EXPORT_FILES = {"badnet": "badnet.h5", "repaired": "repaired.h5", "bank": "strip_bank.npy", "spec": "gate.json"}


def _scale_of(divisor, where, network):
    for name, value in SCALES.items():
        if value == divisor:
            return name
    raise ModelError(f"{where}: layer {network}: input scaling: expected a divisor among "
                     f"{sorted(SCALES.values())}, got {divisor!r}")


def export_goodnet(classifier, out_dir, protect=()):
    """Write a GoodNet (or gated GoodNet) as files a Keras 2 grader loads without goodnet.

    goodnet's GoodNet file cannot open in Keras 2: its combiner and STRIP gate
    are Keras 3 layers, and its two networks are nested models, whose node
    numbering Keras 2 and Keras 3 do not share (see :data:`goodnet.keras2.NESTED_MODELS`).
    The export is therefore the two networks as plain Keras 2 dialect files
    and the rest in ``gate.json`` (plus ``strip_bank.npy`` for a gated G);
    the README's ``load_goodnet`` recombines them in Keras 2 or Keras 3 with
    NumPy, answering as G does.

    Args:
        classifier: :class:`goodnet.models.Classifier` of the GoodNet.
        out_dir: the folder to write ``badnet.h5``, ``repaired.h5``,
            ``gate.json`` and, for a gated G, ``strip_bank.npy`` into.
        protect: input paths never to overwrite.

    Returns:
        dict: ``files`` ({"badnet", "repaired", "spec"[, "bank"]: path}) and
        ``spec`` (what ``gate.json`` holds).

    Raises:
        ModelError: the model is not a GoodNet, it is gated by BaDExpert
        (alone or with STRIP: the export supports the STRIP gate only), or a
        network cannot be written in the Keras 2 dialect.

    Example:
        >>> export_goodnet(load_model("out/goodnet_X=10.h5"), "out/goodnet_X=10_keras2")
    """
    import keras

    from goodnet.defenses.combine import goodnet_parts
    from goodnet.files import atomic_write, write_text
    from goodnet.keras2 import obstacle
    from goodnet.models import Classifier, save_model

    where = classifier.path or "model"
    parts = goodnet_parts(classifier)
    if parts["detector"] not in (None, "strip"):
        raise ModelError(f"{where}: layer {parts['expert_score'].name}: expected a GoodNet ungated or gated by STRIP "
                         f"(the Keras 2 export has no BaDExpert gate), got a {parts['detector']} gate")
    protect = tuple(protect) + ((classifier.path,) if classifier.path else ())
    bad_divisor = SCALES[classifier.scale]
    scales = {"badnet": classifier.scale,
              "repaired": _scale_of(bad_divisor * parts["divisor"] / parts["multiplier"], where, "repaired")}
    files = {}
    for network in ("badnet", "repaired"):
        found = obstacle(parts[network])
        if found is not None:
            raise ModelError(f"{where}: layer {network}: {found[0]}; expected a network of Keras built-in layers")
        files[network] = save_model(Classifier(parts[network], scales[network], parts["num_classes"]),
                                    os.path.join(out_dir, EXPORT_FILES[network]), protect=protect)
    spec = {"format": EXPORT_FORMAT, "num_classes": parts["num_classes"], "input_scale": classifier.scale,
            "badnet": EXPORT_FILES["badnet"], "repaired": EXPORT_FILES["repaired"],
            "repaired_multiplier": parts["multiplier"], "repaired_divisor": parts["divisor"],
            "answer": parts["answer"], "strip": None}
    gate = parts["gate"]
    if gate is not None:
        spec["strip"] = {"bank": EXPORT_FILES["bank"], "threshold": parts["threshold"], "blend": gate.blend,
                         "alpha": gate.alpha, "maximum": gate.maximum}
        files["bank"] = os.path.join(out_dir, EXPORT_FILES["bank"])
        with atomic_write(files["bank"], protect=protect) as temporary:
            with open(temporary, "wb") as handle:
                np.save(handle, keras.ops.convert_to_numpy(gate.bank).astype(np.float32))
    files["spec"] = write_text(os.path.join(out_dir, EXPORT_FILES["spec"]), json.dumps(spec, indent=2) + "\n",
                               protect=protect)
    return {"files": files, "spec": spec}
