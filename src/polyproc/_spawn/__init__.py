"""Start methods: each module has a ``Popen`` that starts a child for a ``Process``.

``fork`` forks this process, ``spawn`` starts a fresh interpreter, ``forkserver`` asks a
server process (started once per parent) to fork. Children run ``bootstrap`` code.
"""
