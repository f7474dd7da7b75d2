"""One module per ``rayalign`` sub-command: parse arguments, call one function, print."""
