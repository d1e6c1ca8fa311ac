//go:build !unix

package lodestar_test

import (
	"net"
	"testing"
)

// reservedAddr returns the address of a listener it closed: connections to it
// are refused (another listener could take the port meanwhile; the unix
// version holds it).
func reservedAddr(t *testing.T) (addr string, release func()) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr = l.Addr().String()
	l.Close()
	return addr, func() {}
}
