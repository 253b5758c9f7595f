"""Storage and bookkeeping every layer uses: NPZ/JSON files and their contracts, logs, timing, statistics, numerics,
the Hub cache and offline resolution, sharded files and their gathers. Imports nothing from the rest of the package."""
