"""`python -m adpulse_batch` (what `accelerate launch -m adpulse_batch` runs)."""

from adpulse_batch.cli import main

if __name__ == "__main__":
    main()
