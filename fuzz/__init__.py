"""Fuzzing of the HTTP/1.1 decoders (`make fuzz`): a strict reference parser, the comparison
with it, and the atheris entry point. Not part of the installed package."""
