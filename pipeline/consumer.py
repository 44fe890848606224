"""Placeholder until this stage lands."""

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def main(args: argparse.Namespace) -> int:
    print("not implemented yet")
    return 0
