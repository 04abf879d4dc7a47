"""Seeing a job while it runs and after: the live page (``corral run … --ui``), the HTML report
(``corral report OUT``, ``--report``), both built on the observer hooks.

``corral.ui.plugin`` is the built-in plugin, imported by every run: it imports nothing of the rest
until a run asks for it, so that a run without ``--ui`` starts no server and loads no web library.
"""
