"""Shared plumbing: settings, logging, client factories, the stage runner and the CLI."""
