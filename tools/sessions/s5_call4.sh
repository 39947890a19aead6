#!/usr/bin/env bash
# Session 5, call 4 (2×H200, ~6 min): call 3's runs again (the symmetric exchange through a helper's death, then
# sharded weights with it), after call 3 found the next group's rendezvous hung on reused group names (the fix tried
# then, a self-chosen name, failed too: docs/benchmarks.md).
exec bash "$(dirname "${BASH_SOURCE[0]}")/s5_call3.sh"
