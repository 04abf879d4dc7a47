"""Built-in executors, registered as plugins exactly like external ones."""
