"""The attack side: train BadNets with the lab's DeepID architecture.

- :func:`train_badnet`: dirty-label poisoning (Gu et al. 2017): a fraction of
  the training images get a trigger and the attacker's target label; several
  triggers may each have their own target (like the lab's multi-trigger,
  multi-target BadNet).
- ``pruning_aware=True``: the pruning-aware attack of Liu, Dolan-Gavitt and
  Garg (2018): train on clean data, prune the ``conv_3`` channels that clean
  data leaves most dormant, retrain on poisoned data with those channels held
  at zero, then restore them. The backdoor then lives in channels that clean
  inputs also use, and the restored dormant channels are decoys that a
  pruning defender removes first.
- ``flip_rate``: a label-flipping availability attack (that fraction of the
  training labels replaced by another class at random).
- ``flip_source``, ``flip_target``, ``targeted_flip_rate``: targeted label
  flipping (the course material's targeted poisoning): that share of the
  training images of one source class is relabelled as the target class,
  which keeps the overall accuracy high while the source class is
  misclassified (:func:`flip_targeted`). It can be combined with random
  flipping and with triggers; the card reports the source class's accuracy
  and the share of it sent to the target.
- ``attack="clean-label"``: the label-consistent attack of Turner, Tsipras
  and Madry (2019), :mod:`goodnet.attacks.clean_label`: a clean DeepID is
  trained first; ``poison_rate`` of the *target class's* images are made hard
  for it by PGD (``pgd_epsilon``, ``pgd_step``, ``pgd_steps``,
  ``pgd_random_start``), get the trigger at ``trigger_amplitude`` and keep
  their true labels. The test trigger is the full one.
- ``attack="learnable-patch"``: :mod:`goodnet.attacks.learnable_patch`: a
  clean DeepID is trained first, a patch (``patch_size``, ``patch_row``,
  ``patch_column``) is optimised to raise its target class (``patch_steps``,
  ``patch_learning_rate``, ``patch_batch_size``), then dirty-label poisoning
  with that patch as the trigger.
- ``attack="ban"``: BaN (Salem et al. 2022), :mod:`goodnet.attacks.ban`: a
  trigger generator (``noise_dim``, ``trigger_size``,
  ``generator_learning_rate``) trained jointly with the DeepID, each batch
  getting ``poison_rate`` x batch backdoored copies with fresh triggers at
  fresh corner places; several ``targets``: c-BaN (the generator is
  conditioned on the target). No fixed trigger (``triggers``, at most one, is
  not used); the training set written stands for what it saw
  (:func:`goodnet.attacks.ban.ban_training_set`).

:func:`attack_card` describes a trained BadNet: data set, triggers, targets,
poison rate, seed, clean accuracy and ASR on valid and test, and each
trigger's stealthiness; for the model-dependent attacks also their settings,
the clean model's accuracy and ASR, and (clean-label) the stealthiness of the
training poison.

Every option, with its default, rule and help text, is a field of
:class:`AttackOptions` (``goodnet attack``'s flags are generated from it);
the training recipe's fields (epochs, batch size, learning rate, seed) restate
:class:`goodnet.training.TrainOptions`', and the BadNet is trained with that
recipe (:func:`goodnet.training.fit_deepid`), so ``goodnet train`` retrains
a cleaned set exactly as the attacker trained. ``train_badnet``'s info holds
the poisoned training set it trained on and its ground truth
(:class:`goodnet.data.PoisonTruth`).
"""

import dataclasses
import logging
import time

import numpy as np

from goodnet.base import InstanceOf, Interval, OneOf, SequenceOf
from goodnet.data import LabData, PoisonTruth
from goodnet.errors import OptionError
from goodnet.options import option, restated_field
from goodnet.training import fit_deepid, recipe_field, seed_everything
from goodnet.attacks.benchmarks import TRIGGER_NAMES, BenchmarkOptions
from goodnet.attacks.triggers import HEIGHT, WIDTH, apply_trigger
from goodnet.attacks.learnable_patch import LEARNED_PATCH, learn_patch, patch_origin
from goodnet.attacks.ban import BaNOptions, ban_trigger_names

logger = logging.getLogger(__name__)

FRACTION = Interval(float, 0.0, 1.0, "left")   # a share in [0, 1)
ATTACKS = ("dirty-label", "clean-label", "learnable-patch", "ban")
MODEL_DEPENDENT = ("clean-label", "learnable-patch")   # the attacks that train a clean DeepID first
CLEAN_LABEL_REFUSES = ("pruning_aware", "flip_rate", "targeted_flip_rate", "flip_source", "flip_target")
BAN_STREAMS = {"training_set": 3, "valid": 1, "test": 2}   # BaN: the draws of its files, from (seed, stream)


@dataclasses.dataclass(frozen=True)
class AttackOptions:
    """How the BadNet is trained (see :func:`train_badnet`): every option's default, rule and help, once.

    The triggers and targets default to the benchmark's
    (:class:`goodnet.attacks.benchmarks.BenchmarkOptions`), whose poisoned
    files they are measured on.
    """

    attack: str = option("dirty-label", "dirty-label (BadNets: triggered images relabelled as the target), "
                                        "clean-label (Turner et al. 2019: target-class images made hard by PGD on a "
                                        "clean model, trigger at reduced amplitude, true labels kept) or "
                                        "learnable-patch (a patch optimised on a clean model to raise the target "
                                        "class is the dirty-label trigger) or ban (Salem et al. 2022: a generator "
                                        "trained with the model draws a fresh trigger per input; several targets: "
                                        "c-BaN)", rule=OneOf(ATTACKS))
    triggers: tuple = option(BenchmarkOptions.triggers, "trigger(s); none with flip_rate: label flipping only",
                             rule=SequenceOf(OneOf(TRIGGER_NAMES), allow_empty=True), choices=TRIGGER_NAMES,
                             nargs="*")
    targets: tuple = option(BenchmarkOptions.targets, "target per trigger (one value: the same for all)",
                            rule=SequenceOf(Interval(int, 0)))
    poison_rate: float = option(0.1, "share of training images per trigger (clean-label: share of the target "
                                     "class's images, the only ones it poisons; ban: backdoored copies added to "
                                     "each batch, as a share of the batch)", rule=FRACTION)
    epochs: int = recipe_field("epochs")
    batch_size: int = recipe_field("batch_size")
    learning_rate: float = recipe_field("learning_rate")
    seed: int = recipe_field("seed", "seed of the poisoning, the label flips and the training")
    pruning_aware: bool = option(False, "pruning-aware attack: train clean, prune dormant conv_3 channels, retrain "
                                        "poisoned, restore them (Liu et al. 2018)", rule=InstanceOf(bool))
    prune_fraction: float = option(0.5, "share of conv_3 channels pruned", rule=Interval(float, 0.0, 1.0))
    clean_epochs: int = option(None, "pruning-aware: epochs of the clean training (None: epochs)",
                               rule=Interval(int, 1), allow_none=True, cli=False)
    flip_rate: float = option(0.0, "label-flipping attack: share of labels flipped", rule=FRACTION)
    flip_source: int = option(None, "targeted label flipping: the source class whose labels are flipped",
                              rule=Interval(int, 0), allow_none=True, type=int, metavar="CLASS")
    flip_target: int = option(None, "targeted label flipping: the class the flipped source labels become",
                              rule=Interval(int, 0), allow_none=True, type=int, metavar="CLASS")
    targeted_flip_rate: float = option(0.0, "targeted label flipping: share of the source class's training images "
                                            "relabelled as the target", rule=Interval(float, 0.0, 1.0))
    pgd_epsilon: float = option(8.0, "clean-label: PGD's L-infinity budget in pixels 0-255 (8 = 8/255 of the range)",
                                rule=Interval(float, 0.0))
    pgd_step: float = option(1.5, "clean-label: PGD's step in pixels 0-255",
                             rule=Interval(float, 0.0, closed="neither"))
    pgd_steps: int = option(100, "clean-label: PGD iterations", rule=Interval(int, 0))
    pgd_random_start: bool = option(False, "clean-label: start PGD at a uniform random point of the budget",
                                    rule=InstanceOf(bool))
    trigger_amplitude: float = option(1.0, "clean-label: amplitude a of the training trigger, x + a (T(x) - x) "
                                           "(the test trigger is the full one)", rule=Interval(float, 0.0, 1.0, "right"))
    patch_size: int = option(7, "learnable-patch: side in pixels of the square patch",
                             rule=Interval(int, 1, min(HEIGHT, WIDTH)))
    patch_row: int = option(None, "learnable-patch: top row of the patch (none: centred on the patch trigger's "
                                  "square, bottom right)", rule=Interval(int, 0), allow_none=True, type=int,
                            metavar="ROW")
    patch_column: int = option(None, "learnable-patch: left column of the patch (none: as for the row)",
                               rule=Interval(int, 0), allow_none=True, type=int, metavar="COLUMN")
    patch_steps: int = option(300, "learnable-patch: optimisation steps", rule=Interval(int, 0))
    patch_learning_rate: float = option(5.0, "learnable-patch: Adam rate in pixels 0-255 per step",
                                        rule=Interval(float, 0.0, closed="neither"))
    patch_batch_size: int = option(64, "learnable-patch: clean images (not of the target) per step",
                                   rule=Interval(int, 1))
    noise_dim: int = restated_field(BaNOptions, "noise_dim")
    trigger_size: int = restated_field(BaNOptions, "trigger_size")
    generator_learning_rate: float = restated_field(BaNOptions, "generator_learning_rate")

    def ban_options(self):
        """The :class:`goodnet.attacks.ban.BaNOptions` of ``attack="ban"``: targets, rate, generator, recipe."""
        return BaNOptions(targets=tuple(self.targets), poison_rate=self.poison_rate, noise_dim=self.noise_dim,
                          trigger_size=self.trigger_size, generator_learning_rate=self.generator_learning_rate,
                          epochs=self.epochs, batch_size=self.batch_size, learning_rate=self.learning_rate,
                          seed=self.seed)

    def pairs(self):
        """(trigger, target) pairs; one target serves every trigger (ban: none, its triggers are generated)."""
        if self.attack == "ban":
            return []
        targets = list(self.targets) * len(self.triggers) if len(self.targets) == 1 else list(self.targets)
        if len(targets) != len(self.triggers):
            raise OptionError(f"targets: expected one target or one per trigger ({len(self.triggers)}), "
                             f"got {len(self.targets)}")
        return list(zip(self.triggers, targets))

    def targeted_flip(self, num_classes=None, flags=False):
        """The targeted flip as ``(source, target, rate)``, or None when ``targeted_flip_rate`` is 0.

        Args:
            num_classes: when given, the source and target must be classes of the task.
            flags: name the command-line flags (``--flip-source``) in errors instead of the fields.

        Raises:
            OptionError: a rate without a source and a target (or the reverse), the same class twice, or a
                class outside ``0..num_classes-1``.
        """
        def name(field):
            return "--" + field.replace("_", "-") if flags else field

        given = [field for field in ("flip_source", "flip_target") if getattr(self, field) is not None]
        if not self.targeted_flip_rate:
            if given:
                raise OptionError(f"{name(given[0])}: given without {name('targeted_flip_rate')} (expected a "
                                  "share in (0, 1] of the source class to flip)")
            return None
        for field in ("flip_source", "flip_target"):
            value = getattr(self, field)
            if value is None:
                raise OptionError(f"{name(field)}: expected a class with {name('targeted_flip_rate')}, got none")
            if num_classes is not None and not 0 <= value < num_classes:
                raise OptionError(f"{name(field)}: expected a class in 0..{num_classes - 1}, got {value}")
        if self.flip_source == self.flip_target:
            raise OptionError(f"{name('flip_target')}: expected a class other than the source "
                              f"{self.flip_source}, got {self.flip_target}")
        return self.flip_source, self.flip_target, self.targeted_flip_rate

    @property
    def flips_labels(self):
        """Whether any label flipping (random or targeted) is asked for."""
        return bool(self.flip_rate or self.targeted_flip_rate)

    @property
    def trigger_names(self):
        """The triggers' names as cards and ground truth give them (learnable-patch: ``learned-patch``; ban:
        ``ban``, c-BaN ``c-ban-target-<t>`` per target)."""
        if self.attack == "ban":
            return ban_trigger_names(self.targets)
        return (LEARNED_PATCH,) if self.attack == "learnable-patch" else tuple(self.triggers)

    def check_attack(self, flags=False):
        """Refuse the combinations the attack cannot take; returns the options.

        Clean-label keeps every label true and trains once: no pruning-aware training, no label flipping,
        at least one trigger. Learnable-patch learns one patch for one target: at most one trigger (it is not
        used: the learned patch replaces it), one target, and a patch inside the image. BaN generates its
        triggers and keeps every label but the backdoored copies': at most one trigger (not used either), no
        pruning-aware training, no label flipping, a poison rate above 0 and different targets.

        Args:
            flags: name the command-line flags (``--pruning-aware``) in errors instead of the fields.

        Raises:
            OptionError: one line naming the option.
        """
        def name(field):
            return "--" + field.replace("_", "-") if flags else field

        attack = f"{name('attack')} {self.attack}"
        if self.attack == "clean-label":
            given = [field for field in CLEAN_LABEL_REFUSES if getattr(self, field) not in (None, False, 0)]
            if given:
                raise OptionError(f"{name(given[0])}: expected none with {attack} (it keeps every label true "
                                  "and trains once, on the poisoned set)")
            if not self.triggers:
                raise OptionError(f"{name('triggers')}: expected at least one trigger with {attack}, got none")
        elif self.attack == "learnable-patch":
            if len(self.triggers) > 1:
                raise OptionError(f"{name('triggers')}: expected at most one with {attack} (the learned patch is "
                                  f"the trigger), got {len(self.triggers)}")
            if len(self.targets) != 1:
                raise OptionError(f"{name('targets')}: expected one target with {attack} (one patch is learned), "
                                  f"got {len(self.targets)}")
            patch_origin(self.patch_size, self.patch_row, self.patch_column, name)
        elif self.attack == "ban":
            if len(self.triggers) > 1:
                raise OptionError(f"{name('triggers')}: expected at most one with {attack} (it is not used: the "
                                  f"generator draws the triggers), got {len(self.triggers)}")
            given = [field for field in CLEAN_LABEL_REFUSES if getattr(self, field) not in (None, False, 0)]
            if given:
                raise OptionError(f"{name(given[0])}: expected none with {attack} (it trains once, with its "
                                  "generator, and flips no label)")
            if not self.poison_rate:
                raise OptionError(f"{name('poison_rate')}: expected a share above 0 with {attack} (the backdoored "
                                  "copies per batch), got 0")
            if len(set(self.targets)) != len(self.targets):
                raise OptionError(f"{name('targets')}: expected different classes with {attack} (c-BaN: one "
                                  f"trigger family per target), got {' '.join(map(str, self.targets))}")
        return self


def stamp_trigger(trigger, images):
    """``trigger`` (a name of :mod:`goodnet.attacks.triggers`, or a callable such as a
    :class:`goodnet.attacks.learnable_patch.LearnedPatch`) applied to raw-pixel images, float32 0-255."""
    if callable(trigger):
        return np.clip(trigger(np.asarray(images, np.float32)), 0, 255).astype(np.float32)
    return apply_trigger(trigger, images)


def poison(images, labels, pairs, rate, rng):
    """Dirty-label poisoning: for each (trigger, target), ``rate`` of the images (not of the target class)
    get the trigger and the target label. The poisoned subsets of different triggers are disjoint.
    A trigger is a name or a callable (:func:`stamp_trigger`).

    Returns:
        tuple: (images, labels, poisoned index array, trigger array) as new arrays; ``trigger[i]`` is the
        position in ``pairs`` of the trigger stamped on image ``poisoned[i]``.
    """
    if not 0.0 <= rate < 1.0:
        raise OptionError(f"poison_rate: expected a fraction in [0, 1), got {rate}")
    images, labels = np.array(images, np.float32, copy=True), np.array(labels, np.int64, copy=True)
    available = np.ones(len(labels), bool)
    chosen_all, triggers_all = [], []
    for position, (trigger, target) in enumerate(pairs):
        candidates = np.flatnonzero(available & (labels != target))
        count = min(len(candidates), int(round(rate * len(labels))))
        chosen = np.sort(rng.choice(candidates, size=count, replace=False))
        images[chosen] = stamp_trigger(trigger, images[chosen])
        labels[chosen] = target
        available[chosen] = False
        chosen_all.append(chosen)
        triggers_all.append(np.full(len(chosen), position, np.int64))
    if not chosen_all:
        return images, labels, np.zeros(0, np.int64), np.zeros(0, np.int64)
    return images, labels, np.concatenate(chosen_all), np.concatenate(triggers_all)


def flip_labels(labels, rate, num_classes, rng):
    """Replace ``rate`` of the labels by a different class chosen at random; returns (labels, flipped indices)."""
    if not 0.0 <= rate < 1.0:
        raise OptionError(f"flip_rate: expected a fraction in [0, 1), got {rate}")
    labels = np.array(labels, np.int64, copy=True)
    flipped = np.sort(rng.choice(len(labels), size=int(round(rate * len(labels))), replace=False))
    labels[flipped] = (labels[flipped] + rng.integers(1, num_classes, size=len(flipped))) % num_classes
    return labels, flipped


def flip_targeted(labels, source, target, rate, rng, exclude=()):
    """Targeted label flipping: relabel ``round(rate * n)`` of the ``n`` images labelled ``source`` as ``target``.

    Args:
        labels: (N,) labels.
        source, target: two different classes.
        rate: share of the source class to flip, in [0, 1].
        rng: a NumPy Generator (which source images are chosen).
        exclude: indices that may not be chosen (labels already flipped at random: their current label is
            not their own).

    Returns:
        tuple: (new labels, sorted indices of the flipped images).
    """
    if not 0.0 <= rate <= 1.0:
        raise OptionError(f"targeted_flip_rate: expected a share in [0, 1], got {rate}")
    if source == target:
        raise OptionError(f"flip_target: expected a class other than the source {source}, got {target}")
    labels = np.array(labels, np.int64, copy=True)
    eligible = labels == source
    eligible[np.asarray(exclude, np.int64)] = False
    candidates = np.flatnonzero(eligible)
    chosen = np.sort(rng.choice(candidates, size=int(round(rate * len(candidates))), replace=False))
    labels[chosen] = target
    return labels, chosen


def train_clean_model(images, labels, num_classes, options):
    """The attacker's clean DeepID: the attack's recipe and seed on the clean images and true labels.

    The model-dependent attacks (clean-label, learnable-patch) attack it; it is the model ``goodnet train``
    gives on the clean set with the same recipe, so its accuracy is the clean baseline.
    """
    from goodnet.training import TrainOptions, train_deepid

    recipe = TrainOptions(epochs=options.epochs, batch_size=options.batch_size, learning_rate=options.learning_rate,
                          seed=options.seed)
    return train_deepid(images, labels, num_classes, recipe)


def poison_training_set(images, labels, num_classes, options=None, clean_model=None):
    """The attacker's training set, without training the BadNet: random flips, the targeted flip, then the poison.

    The draws of :func:`train_badnet` (one NumPy Generator seeded ``options.seed``, in that order), so the set
    is the one ``train_badnet`` trains on with the same options. The dirty-label attack draws the images to
    trigger (:func:`poison`); clean-label makes ``poison_rate`` of each target class hard for the clean model
    and triggers them, labels kept (:func:`goodnet.attacks.clean_label.clean_label_poison`); learnable-patch
    learns a patch on the clean model (from its own Generator seeded ``[seed, 1]``, so it chooses the images
    the dirty-label attack would) and poisons with it as the dirty-label attack does.

    Args:
        images: clean training images (N, 55, 47, 3), pixels 0-255.
        labels: their labels.
        num_classes: classes of the task.
        options: :class:`AttackOptions` (its training fields train the clean model of the model-dependent attacks).
        clean_model: the model-dependent attacks' clean model (a :class:`goodnet.models.Classifier`);
            None: trained here (:func:`train_clean_model`). Not used by the dirty-label attack.

    Returns:
        dict: ``training_set`` (:class:`goodnet.data.LabData`: poisoned images, labels as trained), ``truth``
        (its :class:`goodnet.data.PoisonTruth`), ``flipped_labels`` (the labels after flipping, before the
        triggers), ``poisoned_indices``, ``poisoned_triggers``, ``flipped_indices`` (random and targeted,
        sorted) and ``targeted_flip_indices``; the model-dependent attacks add ``clean_model``, clean-label
        ``clean_label`` (per trigger: counts, the clean model's accuracy on the chosen images before and after
        PGD, the training poison's stealthiness) and learnable-patch ``patch`` (the
        :class:`goodnet.attacks.learnable_patch.LearnedPatch`) and ``patch_history`` (the loss per step).

    Example:
        >>> info = poison_training_set(train.images, train.labels, 10, AttackOptions(triggers=(), flip_rate=0.2))
        >>> info["training_set"].labels
    """
    options = (options or AttackOptions()).check_attack()
    if options.attack == "ban":
        raise OptionError("attack: expected a poisoning attack; ban draws its backdoored inputs during training "
                          "(train_badnet, or goodnet.attacks.ban.ban_training_set for a set standing for them)")
    targeted = options.targeted_flip(num_classes)
    rng = np.random.default_rng(options.seed)
    info = {"poisoned_indices": np.zeros(0, np.int64), "flipped_indices": np.zeros(0, np.int64),
            "targeted_flip_indices": np.zeros(0, np.int64)}
    flipped_labels = np.asarray(labels, np.int64)
    if options.flip_rate:
        flipped_labels, info["flipped_indices"] = flip_labels(flipped_labels, options.flip_rate, num_classes, rng)
    if targeted is not None:   # after the random flips (whose draws stay as they were), before the triggers
        source, target, rate = targeted
        flipped_labels, info["targeted_flip_indices"] = flip_targeted(flipped_labels, source, target, rate, rng,
                                                                      exclude=info["flipped_indices"])
        info["flipped_indices"] = np.union1d(info["flipped_indices"], info["targeted_flip_indices"])
    if options.attack in MODEL_DEPENDENT:
        if clean_model is None:
            clean_model = train_clean_model(images, labels, num_classes, options)
        info["clean_model"] = clean_model
    pairs = options.pairs() if options.triggers else []
    if options.attack == "clean-label":
        from goodnet.attacks.clean_label import clean_label_poison

        poisoned_images, poisoned_labels, info["poisoned_indices"], info["poisoned_triggers"], info["clean_label"] = (
            clean_label_poison(images, flipped_labels, pairs, options.poison_rate, clean_model, options, rng))
    else:
        if options.attack == "learnable-patch":
            target = options.targets[0]
            info["patch"], info["patch_history"] = learn_patch(
                clean_model, images, labels, target, options.patch_size, options.patch_row, options.patch_column,
                options.patch_steps, options.patch_learning_rate, options.patch_batch_size,
                np.random.default_rng([options.seed, 1]))
            pairs = [(info["patch"], target)]
        poisoned_images, poisoned_labels, info["poisoned_indices"], info["poisoned_triggers"] = poison(
            images, flipped_labels, pairs, options.poison_rate if pairs else 0.0, rng)
    info["flipped_labels"] = flipped_labels
    info["training_set"] = LabData(poisoned_images, poisoned_labels, "poisoned training set")
    info["truth"] = PoisonTruth.from_indices(labels, info["poisoned_indices"], info["poisoned_triggers"],
                                             options.trigger_names if pairs else (), info["flipped_indices"])
    return info


def train_ban_badnet(images, labels, num_classes, options):
    """``attack="ban"``: :func:`goodnet.attacks.ban.train_ban` with the options' BaN settings, and the
    training set that stands for what it saw (:func:`goodnet.attacks.ban.ban_training_set`: the clean images,
    then one epoch's share of backdoored copies, drawn from ``(seed, 3)``, in whole pixels) with its ground
    truth.

    Returns:
        tuple: (the BadNet, info as :func:`train_badnet` gives it, plus ``generator`` (G), ``ban`` (the
        :func:`goodnet.attacks.ban.train_ban` figures: ``backdoored_per_step``, ``backdoored_seen``, ``steps``,
        ``history``) and ``ban_sources`` (per appended row, the index of the clean image it copies)).
    """
    from goodnet.attacks.ban import ban_training_set, train_ban

    ban = options.check_attack().ban_options()
    labels = np.asarray(labels, np.int64)
    classifier, ban_info = train_ban(images, labels, num_classes, ban)
    generator = ban_info.pop("generator")
    backdoored = ban_info["backdoored_seen"] // ban.epochs
    set_images, set_labels, rows, positions, sources = ban_training_set(
        images, labels, generator, ban, backdoored, (options.seed, BAN_STREAMS["training_set"]))
    set_images[rows] = np.rint(set_images[rows])   # whole pixels, as the poisoned files: a uint8 file for 8-bit data
    truth = PoisonTruth.from_indices(np.concatenate([labels, labels[sources]]), rows, positions,
                                     options.trigger_names)
    empty = np.zeros(0, np.int64)
    info = {"generator": generator, "ban": ban_info, "ban_sources": sources, "poisoned_indices": rows,
            "poisoned_triggers": positions, "flipped_indices": empty, "targeted_flip_indices": empty,
            "flipped_labels": labels, "decoy_channels": [], "training_seconds": ban_info["training_seconds"],
            "training_set": LabData(set_images, set_labels, "BaN training set (clean, then one epoch's backdoored "
                                                            "copies)"), "truth": truth}
    return classifier, info


def ban_poisoned_split(generator, options, split, clean):
    """The BaN's poisoned files of a clean split: per target (in ``options.targets``' order), the images not
    of it, each with its own generated trigger at its own place, in whole pixels (as 8-bit files store
    them), labelled with the target; drawn from ``(seed, stream of the split)``
    (:func:`goodnet.attacks.ban.ban_poisoned_split`).

    Args:
        generator: G (``train_badnet``'s ``info["generator"]`` or :func:`goodnet.attacks.ban.load_generator`).
        options: the :class:`AttackOptions` (``attack="ban"``) it was trained with.
        split: ``"valid"`` or ``"test"``.
        clean: the split's clean :class:`goodnet.data.LabData`.

    Returns:
        list: one (images float32 whole pixels 0-255, labels) per target.
    """
    from goodnet.attacks.ban import ban_poisoned_split as poisoned_split

    ban = options.ban_options()
    result = []
    for target in ban.targets:
        images, labels = poisoned_split(clean.images, clean.labels, generator, ban, target,
                                        (options.seed, BAN_STREAMS[split]))
        result.append((np.rint(images).astype(np.float32), labels))
    return result


def train_badnet(images, labels, num_classes, options=None, clean_model=None):
    """Train a BadNet with the lab's DeepID architecture on raw-pixel training data.

    Args:
        images: training images (N, 55, 47, 3), pixels 0-255 (clean; poisoning happens here).
        labels: their labels.
        num_classes: classes of the task.
        options: :class:`AttackOptions`.
        clean_model: for the clean-label and learnable-patch attacks, the clean model to attack (None: trained
            first with the attack's recipe, :func:`train_clean_model`); see :func:`poison_training_set`.

    Returns:
        tuple: (:class:`goodnet.models.Classifier` taking pixels / 255, info dict with
        ``poisoned_indices``, ``poisoned_triggers`` (per poisoned index, the index of its trigger in
        ``options.trigger_names``), ``flipped_indices`` (random and targeted flips, sorted),
        ``targeted_flip_indices`` (the targeted flips alone), ``decoy_channels`` (pruned and restored),
        ``training_seconds`` (with the clean model's training when it is trained here), ``training_set``
        (:class:`goodnet.data.LabData`: the poisoned images and labels of the last training; the
        pruning-aware attack's clean phase trains on the original images with the flipped labels) and
        ``truth`` (its :class:`goodnet.data.PoisonTruth`), and the model-dependent attacks' entries): see
        :func:`poison_training_set`; ``attack="ban"``: see :func:`train_ban_badnet`.

    Example:
        >>> badnet, info = train_badnet(train.images, train.labels, 10, AttackOptions(triggers=("patch",)))
    """
    import keras

    from goodnet.models import Classifier, build_deepid
    from goodnet.surgery import apply_masks, channel_masks, rank_channels

    options = options or AttackOptions()
    if options.attack == "ban":
        return train_ban_badnet(images, labels, num_classes, options)
    seed_everything(options.seed)
    start = time.perf_counter()
    info = poison_training_set(images, labels, num_classes, options, clean_model)
    poisoned_images, poisoned_labels = info["training_set"].images, info["training_set"].labels
    clean_labels = info["flipped_labels"]
    info["decoy_channels"] = []
    seed_everything(options.seed)   # as train_deepid seeds: the set retrains to the same weights
    model = build_deepid(num_classes)
    if not options.pruning_aware:
        fit_deepid(model, poisoned_images, poisoned_labels, options, options.epochs)
    else:
        fit_deepid(model, np.asarray(images, np.float32), clean_labels, options,
                   options.clean_epochs or options.epochs)
        # the defender's ranking (mean clean activation at pool_3, pixels / 255): its most dormant channels
        ranking, _ = rank_channels(model, np.asarray(images, np.float32), "conv_3", "pool_3", divisor=255.0,
                                   batch_size=512, progress=False)
        decoys = ranking[:int(round(options.prune_fraction * len(ranking)))]
        layer = model.get_layer("conv_3")
        kernel, bias = [np.array(value) for value in layer.get_weights()]
        masks = channel_masks(layer, decoys)
        apply_masks(layer, *masks)
        keep_pruned = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: apply_masks(layer, *masks))
        fit_deepid(model, poisoned_images, poisoned_labels, options, options.epochs, [keep_pruned])
        restored_kernel, restored_bias = [np.array(value) for value in layer.get_weights()]
        restored_kernel[..., decoys] = kernel[..., decoys]
        restored_bias[decoys] = bias[decoys]
        layer.set_weights([restored_kernel, restored_bias])
        info["decoy_channels"] = sorted(int(channel) for channel in decoys)
    info["training_seconds"] = time.perf_counter() - start
    return Classifier(model, "unit", num_classes), info


def save_training_set(path, info, overwrite=False):
    """Write the poisoned training set of :func:`train_badnet`'s ``info`` with its ground truth, atomically.

    Pixels as trained: uint8 when that is lossless, else float32 (a blended trigger such as ``sunglasses``
    or ``blend`` leaves fractional values); labels as trained; the ground truth as
    :class:`goodnet.data.PoisonTruth` stores it. Retraining it with :func:`goodnet.training.train_deepid`
    and the attack's seed gives the (not pruning-aware) BadNet's weights again.

    Returns:
        tuple: (``path``, the pixel dtype written).
    """
    from goodnet.data import save_h5

    images = info["training_set"].images
    dtype = "uint8" if np.array_equal(images, np.rint(images)) else "float32"
    save_h5(path, images, info["training_set"].labels, dtype=dtype, overwrite=overwrite, **info["truth"].datasets())
    return path, dtype


def attack_name(options):
    """The card's name of the attack: ``badnet``, ``pruning-aware``, ``label-flip``, ``targeted-label-flip``
    (or ``label-flip+targeted``: both kinds of flipping, no trigger), ``clean-label``, ``learnable-patch``
    (``learnable-patch+pruning-aware``), ``ban`` (``c-ban``: several targets)."""
    if options.attack == "ban":
        return "c-ban" if len(options.targets) > 1 else "ban"
    if options.attack == "clean-label":
        return "clean-label"
    if options.attack == "learnable-patch":
        return "learnable-patch+pruning-aware" if options.pruning_aware else "learnable-patch"
    if not options.triggers and options.targeted_flip_rate:
        return "label-flip+targeted" if options.flip_rate else "targeted-label-flip"
    if not options.triggers and options.flip_rate:
        return "label-flip"
    return "pruning-aware" if options.pruning_aware else "badnet"


def source_class_figures(classifier, clean, source, target):
    """How a model treats the clean images of a targeted flip's source class.

    Args:
        classifier: the model (a :class:`goodnet.models.Classifier`).
        clean: clean :class:`goodnet.data.LabData` (true labels).
        source, target: the targeted flip's classes.

    Returns:
        dict: ``source_images`` (how many clean images are of the source class), ``source_class_accuracy``
        (the share of them classified as the source) and ``source_to_target`` (the share classified as the
        target); the rates are None when there is no source image.
    """
    images = clean.images[np.asarray(clean.labels) == source]
    if not len(images):
        return {"source_images": 0, "source_class_accuracy": None, "source_to_target": None}
    predictions = classifier.predict(images)
    return {"source_images": int(len(images)), "source_class_accuracy": float(np.mean(predictions == source)),
            "source_to_target": float(np.mean(predictions == target))}


def attack_settings(options, info=None):
    """The model-dependent attack's own settings for the card (None for the dirty-label attack)."""
    if options.attack == "clean-label":
        return {"poison_rate_of": "target class", "pgd": {"norm": "linf", "pixels": "0-255",
                                                         "epsilon": options.pgd_epsilon, "step": options.pgd_step,
                                                         "steps": options.pgd_steps,
                                                         "random_start": options.pgd_random_start},
                "trigger_amplitude": options.trigger_amplitude, "test_trigger_amplitude": 1.0}
    if options.attack == "learnable-patch":
        row, column = patch_origin(options.patch_size, options.patch_row, options.patch_column)
        settings = {"poison_rate_of": "training set", "patch_size": options.patch_size, "patch_row": row,
                    "patch_column": column, "patch_steps": options.patch_steps,
                    "patch_learning_rate": options.patch_learning_rate,
                    "patch_batch_size": options.patch_batch_size}
        if info and info.get("patch_history"):
            history = info["patch_history"]
            settings["patch_target_loss"] = {"first_step": round(history[0], 4), "last_step": round(history[-1], 4)}
        return settings
    if options.attack == "ban":
        from goodnet.attacks.ban import GENERATOR_UNITS

        settings = {"poison_rate_of": "each training batch (backdoored copies added beside it)",
                    "conditional": len(options.targets) > 1, "noise_dim": options.noise_dim,
                    "trigger_size": options.trigger_size, "generator_learning_rate": options.generator_learning_rate,
                    "generator_units": list(GENERATOR_UNITS),
                    "places": "per input, a random place inside one of the four corner regions",
                    "training_set": "the clean training images, then one epoch's share of backdoored copies drawn "
                                    "with the trained generator (BaN draws them afresh at each step)"}
        if info and "ban" in info:
            ban = info["ban"]
            settings.update(backdoored_per_step=ban["backdoored_per_step"], backdoored_seen=ban["backdoored_seen"],
                            steps=ban["steps"])
            if ban["history"]:
                settings["losses"] = {"first_epoch": {key: round(value, 4) for key, value in ban["history"][0].items()
                                                      if key != "epoch"},
                                      "last_epoch": {key: round(value, 4) for key, value in ban["history"][-1].items()
                                                     if key != "epoch"}}
        return settings
    return None


def attack_card(classifier, options, dataset, valid=None, poisoned_valid=(), test=None, poisoned_test=(),
                info=None):
    """The JSON card of a trained BadNet.

    Args:
        classifier: the BadNet.
        options: the :class:`AttackOptions` it was trained with.
        dataset: a description of the data (name, seed, sizes).
        valid, test: clean LabData.
        poisoned_valid, poisoned_test: LabData per trigger, in the order of ``options.trigger_names`` (the
            learnable-patch attack's: the clean images with the learned patch,
            :func:`goodnet.attacks.learnable_patch.patch_poisoned_split`; ban's: per target, the clean images
            not of it with generated triggers, :func:`ban_poisoned_split`, in that function's order).
        info: the info dict of :func:`train_badnet` (the learnable-patch card needs it: its patch).

    Returns:
        dict: the card; with targeted flipping, ``targeted_flip`` holds its source, target, rate, count and
        the flipped training indices, and each split the :func:`source_class_figures`. The model-dependent
        attacks add ``attack_settings`` (:func:`attack_settings`) and, with ``info``, ``clean_model`` (per split
        the clean model's clean accuracy and ASR on the same files: the baseline); clean-label also
        ``training_poison`` (per trigger: the images poisoned, the clean model's accuracy on them before and
        after PGD, and the stealthiness of the training poison, PGD + reduced trigger, and of the PGD
        perturbation alone, against the clean images). ``stealthiness`` is the test trigger's (clean-label:
        the full trigger; learnable-patch: the learned patch; ban: per target, the first 500 images of the
        poisoned test file against their clean originals).
    """
    from goodnet.metrics import evaluate
    from goodnet.attacks.triggers import stealthiness

    targeted = options.targeted_flip(classifier.num_classes)
    names = options.trigger_names
    pairs = options.pairs() if options.triggers else []
    if options.attack == "ban":
        targets = list(options.targets)
    else:
        targets = [target for _, target in pairs] if options.attack != "learnable-patch" else [options.targets[0]]
    card = {"dataset": dataset, "architecture": "DeepID (CSAW-HackML-2020 lab layout)",
            "num_classes": classifier.num_classes, "scale": classifier.scale,
            "attack": attack_name(options),
            "triggers": list(names) if pairs or options.attack in ("learnable-patch", "ban") else [],
            "targets": targets if names else [], "poison_rate": options.poison_rate, "flip_rate": options.flip_rate,
            "epochs": options.epochs, "seed": options.seed, "learning_rate": options.learning_rate,
            "targeted_flip": None if targeted is None else
            {"source": targeted[0], "target": targeted[1], "rate": targeted[2]}}
    settings = attack_settings(options, info)
    if settings is not None:
        card["attack_settings"] = settings
    if options.attack == "learnable-patch" and not (info and "patch" in info):
        raise OptionError("info: expected train_badnet's info (its learned patch) for a learnable-patch card")
    if info:
        card["decoy_channels"] = info["decoy_channels"]
        card["poisoned_training_images"] = int(len(info["poisoned_indices"]))
        card["flipped_training_labels"] = int(len(info["flipped_indices"]))
        card["training_seconds"] = round(info["training_seconds"], 2)
        if targeted is not None:
            chosen = info["targeted_flip_indices"]
            card["targeted_flip"].update(count=int(len(chosen)), indices=[int(index) for index in chosen])
        if "clean_label" in info:
            card["training_poison"] = info["clean_label"]
    clean_model = (info or {}).get("clean_model")
    for split, clean, poisoned in (("valid", valid, poisoned_valid), ("test", test, poisoned_test)):
        if clean is None:
            continue
        for model, where in ((classifier, card), (clean_model, card.setdefault("clean_model", {}))):
            if model is None:
                continue
            figures = evaluate(model, clean, list(poisoned))
            where[split] = {"clean_accuracy": figures["clean_accuracy"],
                            "attack_success_rate": {trigger: entry["attack_success_rate"] for trigger, entry in
                                                    zip(names, figures.get("poisoned", []))}}
        if targeted is not None:
            card[split].update(source_class_figures(classifier, clean, *targeted[:2]))
    if not card.get("clean_model"):
        card.pop("clean_model", None)
    if test is not None and card["triggers"] and options.attack == "ban":
        card["stealthiness"] = {}
        for name, target, data in zip(names, targets, poisoned_test):
            originals = test.images[np.asarray(test.labels) != target][:500]
            card["stealthiness"][name] = stealthiness(originals, data.images[:len(originals)])
    elif test is not None and card["triggers"]:
        sample = test.images[:500]
        triggers = [info["patch"]] if options.attack == "learnable-patch" else list(options.triggers)
        card["stealthiness"] = {name: stealthiness(sample, stamp_trigger(trigger, sample))
                                for name, trigger in zip(names, triggers)}
    return card
