"""Built-in filesystems, registered as plugins exactly like external ones."""
