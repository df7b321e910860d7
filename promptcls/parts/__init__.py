"""What training updates, as small parts that compose (PEFT's tuners, one module each).

``train_mode`` names parts joined by ``+``: ``"head"``, ``"prompt"``, ``"head+prompt"``, ``"prefix"``,
``"lora"``, ``"head+lora"``, ``"prompt+lora"``, ``"full"``, ... Each part (one file here):

- builds its parameters from the model (``attach``), if it has parameters of its own;
- changes the forward in one of the ways the families offer: spliced input embeddings (the
  template's soft prompt), key/value prefixes at every layer (``model.kv_prefix``), or layers of the
  transformers model replaced by adapted ones (LoRA, IA3, through ``peft``);
- names the parameters it trains (``parameters``), which are exactly the tensors a save holds;
- folds what it needs only while training away afterwards (``after_training``: the prefix MLP).

Parts are rebuilt from the classifier's settings when a save is loaded, then the saved tensors are
copied in: a part's options are ordinary ``PromptClassifier`` parameters.

==========  ================================================  ==========================
part        trains                                            forward change
==========  ================================================  ==========================
head        the family's own head (MLM transform, bias)       none
verbalizer  a vector and bias per label word (WARP)           the output layer's label-word
                                                              rows, replaced
proto       a projection and class prototypes (ProtoVerb)     cosine to prototypes of the
                                                              slot state
prompt      the template's soft tokens (and P-tuning encoder) spliced input embeddings
prefix      key/value prefixes at every layer (P-tuning v2)   pre-filled key/value cache
lora        low-rank updates of the blocks' linear layers     ``peft`` LoRA layers
ia3         IA3 scaling vectors of the blocks' linear layers  ``peft`` IA3 layers
full        every weight of the model                         none
==========  ================================================  ==========================
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:  # torch-free at import: the CLI checks train_mode before it loads anything heavy
    from torch import nn

__all__ = ["Part", "PART_NAMES", "parse_train_mode", "build_parts", "count_parameters"]


class Part:
    """One method of training: its parameters, how it changes the forward, what a save holds."""

    name: ClassVar[str]
    #: the encoder's output for a fixed input does not change while this part trains (head-only caching)
    keeps_encoder: ClassVar[bool] = False
    #: the learning rate when ``learning_rate`` (model side) or ``prompt_learning_rate`` (prompt side) is None
    default_learning_rate: ClassVar[float]
    side: ClassVar[str] = "model"
    #: its parameters are new (not the base model's): the base model's fingerprint leaves them out
    adds_parameters: ClassVar[bool] = False
    #: it trains with its own loss on the slot states (``model.prototypes.loss``), not cross-entropy on class scores
    own_loss: ClassVar[bool] = False

    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options

    def attach(self, model: nn.Module) -> None:
        """Build this part's parameters into ``model`` (a family's prompt model). Called once, before training."""

    def parameters(self, model: nn.Module) -> dict[str, nn.Parameter]:
        """The parameters this part trains, by their names in ``model.named_parameters()``."""
        raise NotImplementedError

    def after_training(self, model: nn.Module) -> None:
        """Fold away what only training needs, so that ``parameters`` names what a save keeps."""

    def describe(self, model: nn.Module) -> dict[str, Any]:
        """The part's settings as a save records them (informational; a load rebuilds from the classifier's)."""
        return dict(self.options)


def _classes() -> dict[str, type[Part]]:
    from .full import FullPart
    from .head import HeadPart
    from .lora import IA3Part, LoraPart
    from .prefix import PrefixPart
    from .prototypes import PrototypePart
    from .soft_prompt import SoftPromptPart
    from .soft_verbalizer import SoftVerbalizerPart

    return {c.name: c for c in (HeadPart, SoftVerbalizerPart, PrototypePart, SoftPromptPart, PrefixPart, LoraPart,
                                IA3Part, FullPart)}


PART_NAMES = ("head", "verbalizer", "proto", "prompt", "prefix", "lora", "ia3", "full")  # the canonical order in a train_mode string

# pairs that do not compose, and why
_CLASHES = {
    frozenset({"lora", "ia3"}): "LoRA and IA3 would adapt the same layers twice: choose one",
    frozenset({"full", "head"}): "'full' already trains the head with every other weight",
    frozenset({"full", "lora"}): "'full' already trains every weight; LoRA is the alternative to it",
    frozenset({"full", "ia3"}): "'full' already trains every weight; IA3 is the alternative to it",
    frozenset({"full", "prefix"}): "'full' trains every weight; add a prefix to a frozen model instead",
    frozenset({"proto", "verbalizer"}): "'proto' and 'verbalizer' are two learned verbalizers: choose one",
    frozenset({"proto", "head"}): "the prototypes read the encoder's states, not the head's output, so 'head' "
                                  "would not train: use 'proto' alone or with 'prompt', 'lora' or 'prefix'",
}


def parse_train_mode(value: Any) -> tuple[str, ...]:
    """``"head+lora"`` -> ``("head", "lora")`` in canonical order; ``"none"`` -> ``()``. Raises on bad names
    and on combinations that do not compose."""
    text = getattr(value, "value", value)
    if not isinstance(text, str):
        raise TypeError(f"train_mode must be a string such as 'head', 'prompt+lora' or 'none', got {value!r}")
    text = text.strip().lower()
    if text == "none":
        return ()
    names = [n.strip() for n in text.split("+")]
    unknown = [n for n in names if n not in PART_NAMES]
    if unknown or not names:
        raise ValueError(f"train_mode={value!r}: {unknown[0] if unknown else text!r} is not a part; parts are "
                         f"{', '.join(repr(n) for n in PART_NAMES)}, joined by '+' (e.g. 'head+lora'), or 'none'")
    if len(set(names)) != len(names):
        raise ValueError(f"train_mode={value!r} names a part twice")
    for pair, why in _CLASHES.items():
        if pair <= set(names):
            raise ValueError(f"train_mode={value!r} does not compose: {why}")
    return tuple(n for n in PART_NAMES if n in names)


def build_parts(names: tuple[str, ...], options: dict[str, Any]) -> list[Part]:
    """The parts of ``names``, each given the options it reads (``prefix_length``, ``lora_rank``, ...)."""
    classes = _classes()
    return [classes[n](options) for n in names]


def count_parameters(model: nn.Module, trained: dict[str, nn.Parameter]) -> dict[str, Any]:
    """Trainable and total parameter counts (shared tensors once), as PEFT's ``print_trainable_parameters``."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    n = sum(p.numel() for p in {id(p): p for p in trained.values()}.values())
    return {"trainable": n, "total": total, "share": n / total if total else 0.0}
