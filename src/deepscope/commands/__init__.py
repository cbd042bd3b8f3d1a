"""Sub-commands of the ``deepscope`` CLI, one module each."""
