"""Core of tabserve: everything the API and the workers share."""
