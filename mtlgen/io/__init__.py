"""Reading and writing scans, discovery of BIDS / CSV sources, provenance."""
