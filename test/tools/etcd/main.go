// Command etcd is etcd's own server (go.etcd.io/etcd/server/v3/etcdmain)
// at the version go.mod pins for Vigil's client and embedded member: the
// external etcd cluster of the lab's external-etcd tests
// (`vigil lab up --external-etcd BIN`). Built from the module, not
// installed from Debian, so that the server's API is exactly the one
// Vigil is built against (docs/install.md, "External etcd").
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
