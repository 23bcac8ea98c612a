import { defineConfig } from "vite";

// The UI is served by vigil under /ui/, from the files this build writes
// into internal/ui/dist/app (embedded into the binary with go:embed).
export default defineConfig({
  base: "/ui/",
  esbuild: { jsx: "automatic", jsxImportSource: "preact" },
  build: {
    outDir: "../internal/ui/dist/app",
    emptyOutDir: true,
    // Served air-gapped from the binary: no module preload polyfill that
    // would inline a script (the page's CSP allows scripts from 'self').
    modulePreload: { polyfill: false },
    sourcemap: false,
  },
});
