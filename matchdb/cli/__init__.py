"""The ``matchdb`` command line: thin wrappers that parse options, call the library and print results.

``root`` holds the click group and registers every command; ``common`` holds the helpers the commands share (it
imports no command); each other module is one command group. Nothing imports ``root`` back.
"""
