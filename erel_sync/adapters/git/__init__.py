"""The git family: the only package that imports GitPython.

`configsource` reads a revision (a directory or a commit) into validated desired state;
`gitwatch` watches a branch's ref and answers questions about its history.
"""
