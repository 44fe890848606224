"""Placeholder until this stage lands."""

import argparse


def add_replay_arguments(parser: argparse.ArgumentParser) -> None:
    pass


add_reset_arguments = add_redrive_arguments = add_replay_arguments


def replay_main(args: argparse.Namespace) -> int:
    print("not implemented yet")
    return 0


reset_main = redrive_main = replay_main
