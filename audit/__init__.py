"""adapter-audit's harness: cards, model zoo, checks, runner, verdicts, gate and reports."""
