"""VisionLLM: a large language model as an open-ended decoder for vision-centric tasks."""

__version__ = "0.1.0"


def _register_resolvers() -> None:
    """``${first_set:a,b}``: the first value that is set; configs use it for "the pretrained
    directory's own tokenizer, else ours"."""
    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver("first_set", lambda *xs: next((x for x in xs if x not in (None, "")), None), replace=True)


_register_resolvers()
