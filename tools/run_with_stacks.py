"""Run a module as ``python -m`` would, printing every thread's stack on SIGUSR1 (diagnosing a hang on a GPU
machine, where no debugger is at hand):

    python3 tools/run_with_stacks.py comfy_xdit_patch.evidence kill &
    kill -USR1 $!            # helpers answer USR1 by themselves
"""
import faulthandler
import os
import runpy
import signal
import sys

faulthandler.register(signal.SIGUSR1, all_threads=True)
sys.argv = sys.argv[1:]
sys.path[0] = os.getcwd()      # as `python -m` from the repo root, not this file's folder
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
