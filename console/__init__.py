"""The web console's static files (HTML, CSS, JavaScript modules), shipped as package data."""
