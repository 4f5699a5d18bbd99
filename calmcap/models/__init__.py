"""calmcap's model components, one file each; :class:`CALMModel` composes them."""
