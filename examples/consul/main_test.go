package main

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// The example runs end to end against a real agent when one is available; run
// fails if any request fails, the first one (sent as soon as NewTransport
// returns, with no waiting of the program's own) included.
func TestExampleRuns(t *testing.T) {
	bin, err := findConsul()
	if err != nil {
		if os.Getenv("LODESTAR_REQUIRE_CONSUL") == "1" {
			t.Fatal(err)
		}
		t.Skip(err)
	}
	if err := run(bin); err != nil {
		t.Fatal(err)
	}
}

// Without a consul binary the program exits with status 1 and one line on
// stderr that says where it looked and to run scripts/consul.sh.
func TestNoConsulBinary(t *testing.T) {
	empty := t.TempDir()
	missing := filepath.Join(empty, "no-such-consul")
	for _, tc := range []struct {
		name    string
		env     []string
		mention []string
	}{
		{"nothing", []string{"LODESTAR_CONSUL="}, nil},
		{"LODESTAR_CONSUL missing", []string{"LODESTAR_CONSUL=" + missing}, []string{"$LODESTAR_CONSUL=" + missing + " is not an executable file"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cmd := exec.Command(os.Args[0], "-test.run=^$")
			// An empty PATH and cache: no consul anywhere.
			cmd.Env = append(os.Environ(), runMainEnv+"=1", "PATH="+empty, "LODESTAR_CACHE="+empty, "HOME="+empty, "XDG_CACHE_HOME="+empty)
			cmd.Env = append(cmd.Env, tc.env...)
			var stdout, stderr strings.Builder
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			err := cmd.Run()
			var exit *exec.ExitError
			if !errors.As(err, &exit) || exit.ExitCode() != 1 {
				t.Fatalf("want exit status 1, got %v (stderr %q)", err, stderr.String())
			}
			if stdout.Len() != 0 {
				t.Errorf("want nothing on stdout, got %q", stdout.String())
			}
			msg := stderr.String()
			if strings.Count(msg, "\n") != 1 || !strings.HasSuffix(msg, "\n") {
				t.Errorf("want one line on stderr, got %q", msg)
			}
			want := append([]string{"examples/consul: no consul binary", "not on PATH",
				"not at " + filepath.Join(empty, "consul-"+consulVersion, "consul"), "run scripts/consul.sh"}, tc.mention...)
			for _, w := range want {
				if !strings.Contains(msg, w) {
					t.Errorf("the hint %q does not say %q", msg, w)
				}
			}
		})
	}
}
