"""Word count written for corral's peers (Lithops, mrjob), run by the suite when they are installed."""
