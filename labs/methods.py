"""The method registry: the one list of fine-tuning methods the course knows.

Everything that needs to know the methods reads this file: the command line (`--method`),
`labs finetune` and `labs compare`, the PEFT file format (peft_type <-> module), the memory model
and the notebook-00 calculator. Adding a method is one entry here plus one technique module.

Each technique module (labs/<module>.py for students, solutions/<module>.py for the reference,
chosen by LABS_IMPL or `--impl`) has `prepare_for_finetune(model, task, options)`, which freezes
the base and adds the method's trainable parameters. "full" is the baseline and lives in
labs/full.py (infrastructure, not an exercise): every weight trains.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, fields
from types import ModuleType

from torch import nn

# New classification heads, by model family: BERT's `classifier`, Llama/GPT's `score`.
TASK_HEADS = ("classifier", "score")


@dataclass(frozen=True)
class Method:
    name: str                 # the --method value
    module: str               # technique module under labs/ or solutions/ ("full": labs/full.py)
    summary: str              # one line for --help and tables
    lr: dict                  # learning rate per preset name (measured: see each entry's comment)
    config: str | None        # the module's config dataclass: its fields are the accepted --option keys
    peft_type: str | None     # adapter_config.json "peft_type"; None: the method saves the whole model
    adds_params: bool         # trains NEW weights (lora, adapters, prompts) or a subset of the base
    notebook: str             # where the method is taught
    trains_all: bool = False  # every weight of the base trains (full fine-tuning)
    checkpointing: bool = True  # can train with gradient checkpointing (prefix tuning cannot: its
                                # prefix rides in the key/value cache, which recomputation drops)
    uses: tuple[str, ...] = ()  # other technique modules it runs: their exercises must be finished too
    virtual_tokens: bool = False  # adds trained positions in front (in the input or the key/value
                                  # cache): a cache computed without them cannot be reused
    loads_quantized: bool = False  # its base is read from the checkpoint in 4 bits, layer by layer
                                   # (labs.nf4_loading), never held whole in fp32 while training

    @property
    def infrastructure(self) -> bool:
        """True for methods implemented in labs/ itself (not an exercise, same for every impl)."""
        return self.peft_type is None

    def technique(self, impl: str | None = None) -> ModuleType:
        """The module that implements this method, from the selected implementation."""
        if self.infrastructure:
            return importlib.import_module(f"labs.{self.module}")
        from labs.impl import technique
        return technique(self.module, impl)

    def learning_rate(self, preset: str) -> float:
        if preset not in self.lr:
            raise ValueError(f"method {self.name!r} has no learning rate for preset {preset!r}; "
                             f"it has {', '.join(self.lr)} (pass --lr to choose one)")
        return self.lr[preset]

    def option_names(self, impl: str | None = None) -> list[str]:
        """The option keys `--option key=value` accepts (the config dataclass's fields)."""
        if self.config is None:
            return []
        return [f.name for f in fields(getattr(self.technique(impl), self.config))]


# Learning rates per preset: quick and laptop measured on SmolLM2-135M "define" (held-out loss after
# the preset's steps, sweep of 3e-4 .. 3e-2, the quick one at 20 steps before the preset went to 16;
# see the registry issue's closing note and benchmarks/lr_sweep.py); gpu scaled down with the longer schedule.
METHODS = {m.name: m for m in (
    Method("full", "full", "full fine-tuning: every weight trains (the baseline)",
           lr={"quick": 5e-5, "laptop": 3e-5, "gpu": 2e-5}, config=None, peft_type=None,
           adds_params=False, notebook="notebooks/01_full_finetuning.ipynb", trains_all=True),
    Method("bitfit", "bitfit", "BitFit: only the biases (or norm gains) train",
           lr={"quick": 1e-2, "laptop": 5e-3, "gpu": 2e-3}, config="BitFitConfig", peft_type="LABS_BITFIT",
           adds_params=False, notebook="notebooks/03_bitfit.ipynb"),
    Method("adapter", "adapters", "bottleneck adapters (Houlsby) after attention and MLP",
           lr={"quick": 2e-3, "laptop": 1e-3, "gpu": 5e-4}, config="AdapterConfig",
           peft_type="LABS_BOTTLENECK_ADAPTER", adds_params=True, notebook="notebooks/04_adapters.ipynb"),
    Method("lora", "lora", "LoRA: low-rank updates B @ A beside frozen linear layers",
           lr={"quick": 2e-3, "laptop": 1e-3, "gpu": 5e-4}, config="LoRAConfig", peft_type="LORA",
           adds_params=True, notebook="notebooks/05_lora.ipynb"),
    Method("prefix", "prefix_tuning", "prefix tuning: trained key/value prefixes in every layer",
           lr={"quick": 1e-2, "laptop": 5e-3, "gpu": 3e-3}, config="PrefixTuningConfig", peft_type="PREFIX_TUNING",
           adds_params=True, notebook="notebooks/06_prefix_tuning.ipynb", checkpointing=False,
           virtual_tokens=True),
    Method("prompt", "prompt_tuning", "prompt tuning: trained soft-prompt embeddings at the input",
           lr={"quick": 3e-2, "laptop": 1e-2, "gpu": 3e-3}, config="PromptTuningConfig", peft_type="PROMPT_TUNING",
           adds_params=True, notebook="notebooks/07_prompt_tuning.ipynb", virtual_tokens=True),
    # QLoRA saves plain LoRA adapters (peft_type LORA, written by the lora module); its own tag only
    # names the method. Learning rates: LoRA's, as in the QLoRA paper (not swept separately).
    Method("qlora", "qlora", "QLoRA: LoRA on a frozen base stored in 4-bit NF4",
           lr={"quick": 2e-3, "laptop": 1e-3, "gpu": 5e-4}, config="QLoRAConfig", peft_type="LABS_QLORA",
           adds_params=True, notebook="notebooks/08_qlora.ipynb", uses=("quantization", "lora"),
           loads_quantized=True),
)}


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[name]


def learning_rate(method: str, preset) -> float:
    """The learning rate `method` trains with under `preset` (a name or a Preset): the preset's own
    `lr` where it sets one, else the method's measured rate for that preset."""
    from labs.presets import Preset, get_preset
    preset = preset if isinstance(preset, Preset) else get_preset(preset)
    return preset.lr if preset.lr is not None else get_method(method).learning_rate(preset.name)


def method_for_peft_type(peft_type) -> Method:
    """The method whose adapters carry this adapter_config.json peft_type."""
    for method in METHODS.values():
        if method.peft_type is not None and method.peft_type == peft_type:
            return method
    known = ", ".join(m.peft_type for m in METHODS.values() if m.peft_type)
    raise ValueError(f"peft_type {peft_type!r} is not supported; this course reads {known}")


def method_for_module(module: str) -> Method:
    """The method implemented by technique module `module` ("lora", "solutions.lora", "labs.lora")."""
    short = module.rsplit(".", 1)[-1]
    for method in METHODS.values():
        if method.module == short:
            return method
    raise ValueError(f"no method is implemented by module {module!r}; the registry has "
                     f"{', '.join(m.module for m in METHODS.values())}")


# ---------------------------------------------------------------------------------------------
# Before loading anything: options and unfinished exercises
# ---------------------------------------------------------------------------------------------
def check_options(method: str, options: dict | None, impl: str | None = None) -> None:
    """Fail before any model is loaded on an option the method does not take."""
    spec = get_method(method)
    accepted = spec.option_names(impl)
    unknown = sorted(set(options or {}) - set(accepted))
    if unknown:
        takes = f"it accepts {', '.join(accepted)}" if accepted else "it takes no options"
        raise ValueError(f"method {method!r} has no option {', '.join(map(repr, unknown))}; {takes}")


def option_modules(method: str, options: dict | None, impl: str | None = None) -> tuple[str, ...]:
    """Other technique modules that these options of the method run (LoRA's use_dora: lora_variants).

    A technique module says so with `modules_for_options(options)`, which also checks the values.
    """
    spec = get_method(method)
    if spec.infrastructure or not options:
        return ()
    ask = getattr(spec.technique(impl), "modules_for_options", None)
    return tuple(ask(options)) if ask else ()


def open_exercises(method: str, impl: str | None = None, options: dict | None = None) -> list[str]:
    """Exercise ids still raising the stub's NotImplementedError in the method's modules (and those its
    options run), in course order."""
    from labs.prerequisites import missing
    return missing([get_method(method).name, *option_modules(method, options, impl)], impl)


def require_finished(method: str, impl: str | None = None, options: dict | None = None) -> None:
    """A clear NotImplementedError, before any model loads, when the method's exercises are open."""
    from labs.impl import current_impl, has_reference
    from labs.prerequisites import describe
    impl = impl or current_impl()
    todo = open_exercises(method, impl, options)
    if todo:
        spec = get_method(method)
        modules = (spec.module, *spec.uses, *option_modules(method, options, impl))
        other = ", or run the reference with --impl solutions (or LABS_IMPL=solutions)" if has_reference() else ""
        raise NotImplementedError(
            f"--method {method} runs your own {', '.join(f'labs/{m}.py' for m in modules)}, where "
            f"{describe(todo, impl)} {'is' if len(todo) == 1 else 'are'} still open; finish {'it' if len(todo) == 1 else 'them'}{other}")


# ---------------------------------------------------------------------------------------------
# Preparing a model
# ---------------------------------------------------------------------------------------------
def prepare(method: str, model: nn.Module, task, options: dict | None = None,
            impl: str | None = None) -> nn.Module:
    """Prepare `model` for fine-tuning `task` with `method`; returns the model to train.

    A technique module that is still an untouched stub raises NotImplementedError naming the
    exercise to do; that message is let through unchanged.
    """
    spec = get_method(method)
    check_options(method, options, impl)
    model = spec.technique(impl).prepare_for_finetune(model, task, dict(options or {}))
    if getattr(task, "kind", None) == "classify":
        train_task_head(model)
    return model


def train_task_head(model: nn.Module) -> list[str]:
    """Make the classification head trainable, whatever the method.

    The head is created fresh, with random weights, when a pretrained model is loaded for
    classification: no pretrained knowledge lives there, so freezing it would leave the output
    random and no adapter could fix that. peft does the same (`modules_to_save`), and the head is
    tiny (D x labels). It is saved together with the adapter.
    """
    from labs.surgery import unfreeze
    names = unfreeze(model, lambda name: name.split(".")[0] in TASK_HEADS)
    if not names:
        raise ValueError(f"{type(model).__name__} has no classification head named "
                         f"{' or '.join(TASK_HEADS)}; load it with task_kind='classify'")
    return names
