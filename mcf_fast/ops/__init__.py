"""Public array functions: validate, convert, allocate, call a kernel."""
