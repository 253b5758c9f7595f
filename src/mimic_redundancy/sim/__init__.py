"""The closed-loop code: simulators, demonstrations, rollouts."""
