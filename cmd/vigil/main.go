// Command vigil is the one Vigil binary: server, agent, CLI and lab.
package main

import (
	"os"

	"github.com/vigilha/vigil/internal/cli"
)

func main() { os.Exit(cli.Execute()) }
