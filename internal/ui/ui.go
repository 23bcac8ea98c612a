// Package ui serves the web UI (docs/ui.md). The files are what web/
// builds (Vite, into dist/app), embedded into the binary: the UI comes from
// the API's own origin and asks no other host for anything, so it works
// air-gapped.
package ui

import (
	"embed"
	"io"
	"io/fs"
	"net/http"
	"strings"
)

//go:embed all:dist
var files embed.FS

// Handler serves the embedded UI under /ui/.
func Handler() http.Handler {
	app, err := fs.Sub(files, "dist/app")
	if err != nil {
		return notBuilt()
	}
	return New(app)
}

// New serves the UI held in app (its index.html at the root) under /ui/;
// without an index.html it serves a page saying the UI was not built in.
func New(app fs.FS) http.Handler {
	if _, err := fs.Stat(app, "index.html"); err != nil {
		return notBuilt()
	}
	files := http.FileServer(http.FS(app))
	return http.StripPrefix("/ui", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		secure(w.Header())
		switch {
		case r.URL.Path == "/" || r.URL.Path == "/index.html":
			// The page names the current build's assets: always asked again.
			w.Header().Set("Cache-Control", "no-cache")
			index, err := fs.ReadFile(app, "index.html")
			if err != nil {
				http.Error(w, err.Error(), http.StatusInternalServerError)
				return
			}
			w.Header().Set("Content-Type", "text/html; charset=utf-8")
			_, _ = w.Write(index)
		case strings.HasPrefix(r.URL.Path, "/assets/"):
			// Vite names assets by their content's hash.
			w.Header().Set("Cache-Control", "public, max-age=31536000, immutable")
			files.ServeHTTP(w, r)
		default:
			files.ServeHTTP(w, r)
		}
	}))
}

// secure sets the headers that keep the UI's page to its own origin: its
// scripts and styles come only from it, it talks only to it (the API), and
// no other site may frame it. Inline style attributes are allowed (the
// progress bars' widths); inline scripts are not.
func secure(h http.Header) {
	h.Set("Content-Security-Policy", "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "+
		"connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Referrer-Policy", "no-referrer")
}

// notBuilt answers every request with a page saying how to build the UI
// into the binary.
func notBuilt() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		secure(w.Header())
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = io.WriteString(w, `<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Vigil: no web UI in this build</title></head>`+
			`<body><h1>This vigil was built without its web UI</h1><p>Build it with <code>scripts/build-ui.sh</code> (Node.js and npm), `+
			`then build vigil again; the API and the CLI work without it.</p></body></html>`)
	})
}
