"""An app of its own with one job kind, `greet`: enable it with JOBSTREAM_EXTRA_APPS=examples.greetings."""
