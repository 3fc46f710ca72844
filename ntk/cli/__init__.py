"""Thin Typer commands: parse options, open inputs, call a pipeline, print a summary."""
