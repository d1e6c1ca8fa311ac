//go:build linux

package debugpage_test

import (
	"bytes"
	"context"
	"errors"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/lodestar-go/lodestar/balancer/debugpage"
)

// The debug page in a real browser: Debian's chromium, headless, loads the
// page served by the handler over loopback while a balancer has an ejected
// endpoint and one with an open breaker, and its rendered DOM shows every
// endpoint of both balancers with its state; then it takes a screenshot.
//
// `make test` installs chromium (scripts/chromium.sh), passes its path in
// LODESTAR_CHROMIUM and sets LODESTAR_REQUIRE_CHROMIUM=1, so the test fails
// there rather than skip; run bare without chromium, it skips. With
// LODESTAR_SCREENSHOT=path (`make screenshot`) the screenshot is written there
// (docs/debug-page.png is made that way); otherwise to a temporary file.
func TestPageInBrowser(t *testing.T) {
	bin := chromium(t)
	f := newFixture(t)
	srv := httptest.NewServer(debugpage.Handler())
	defer srv.Close()

	dom := runChromium(t, bin, "--dump-dom", srv.URL+"/")
	if !strings.Contains(dom, "lodestar balancers") {
		t.Fatalf("chromium's DOM is not the page:\n%.2000s", dom)
	}
	checkPage(t, f, dom)

	shot := os.Getenv("LODESTAR_SCREENSHOT")
	if shot == "" {
		shot = filepath.Join(t.TempDir(), "debug-page.png")
	} else if abs, err := filepath.Abs(shot); err == nil {
		shot = abs
	}
	os.Remove(shot)
	runChromium(t, bin, "--screenshot="+shot, "--window-size=1500,1000", "--hide-scrollbars", srv.URL+"/")
	png, err := os.ReadFile(shot)
	if err != nil {
		t.Fatalf("chromium wrote no screenshot: %v", err)
	}
	if !bytes.HasPrefix(png, []byte("\x89PNG\r\n\x1a\n")) || len(png) < 10_000 {
		t.Fatalf("the screenshot (%d bytes) is not a plausible PNG", len(png))
	}
	t.Logf("screenshot: %s (%d bytes)", shot, len(png))
}

// chromium returns the browser's path, or skips (fails under
// LODESTAR_REQUIRE_CHROMIUM=1) when there is none.
func chromium(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("LODESTAR_CHROMIUM"); p != "" {
		return p
	}
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome-stable", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("LODESTAR_REQUIRE_CHROMIUM") == "1" {
		t.Fatal("LODESTAR_REQUIRE_CHROMIUM=1 but no chromium: run scripts/chromium.sh (make test does)")
	}
	t.Skip("no chromium on PATH (scripts/chromium.sh installs it; make test runs it)")
	return ""
}

// runChromium runs headless chromium with args, bounded by a minute, in a
// process group of its own that is killed when it is done (its helper
// processes too), and returns its standard output.
func runChromium(t *testing.T, bin string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	profile := t.TempDir()
	all := append([]string{"--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--disable-dev-shm-usage", "--user-data-dir=" + profile}, args...)
	cmd := exec.CommandContext(ctx, bin, all...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if cmd.Process != nil {
		// Whatever is left of the group (renderer, zygote...) goes too.
		if kerr := syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); kerr != nil && !errors.Is(kerr, syscall.ESRCH) {
			t.Logf("killing chromium's process group: %v", kerr)
		}
	}
	if ctx.Err() != nil {
		t.Fatalf("chromium did not finish within a minute; stderr:\n%s", tail(stderr.String()))
	}
	if err != nil {
		t.Fatalf("chromium %s: %v; stderr:\n%s", strings.Join(args, " "), err, tail(stderr.String()))
	}
	return stdout.String()
}

func tail(s string) string {
	if len(s) > 3000 {
		return "..." + s[len(s)-3000:]
	}
	return s
}
