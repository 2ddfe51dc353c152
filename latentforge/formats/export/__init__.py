"""Trainer layouts (docs/exporters.md): each module turns canonical samples into the files one
trainer's own preprocessing would have written; `registry.EXPORTERS` names them."""
