//go:build unix

package lodestar_test

import (
	"net"
	"strconv"
	"sync"
	"syscall"
	"testing"
)

// reservedAddr returns 127.0.0.1:port for a port held by a socket that is
// bound but not listening: connections to it are refused, and no other
// listener or outgoing connection of the test run can take the port (as
// they could a closed listener's) until release frees it for relisten.
func reservedAddr(t *testing.T) (addr string, release func()) {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		syscall.Close(fd)
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		syscall.Close(fd)
		t.Fatal(err)
	}
	var once sync.Once
	release = func() { once.Do(func() { syscall.Close(fd) }) }
	t.Cleanup(release)
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(sa.(*syscall.SockaddrInet4).Port)), release
}
