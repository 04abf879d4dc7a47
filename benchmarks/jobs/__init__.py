"""corral jobs of the benchmark suite (word count is examples/wordcount.py and wordcount_fast.py)."""
