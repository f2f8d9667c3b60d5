"""What the experts learned: orders, routing and decorrelation, as numbers, plots and a report."""
