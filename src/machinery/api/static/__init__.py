"""The dashboard's bundled files (HTML, JavaScript modules, CSS, icon); see ``api/dashboard.py``."""
