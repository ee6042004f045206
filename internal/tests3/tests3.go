// Package tests3 runs a real S3 server, the Versity S3 Gateway (versitygw
// 1.8.0, POSIX backend), for integration tests of S3-backed stores.
//
// The package only executes a prebuilt binary; it never imports the server.
// Build it once with `scripts/versitygw.sh build` (scripts/install-deps.sh
// test does this). The binary is looked up in $PROVENIX_VERSITYGW, else in
// ${PROVENIX_TOOLS_DIR:-/var/cache/provenix-tools}/versitygw-1.8.0/versitygw.
// A missing binary fails the test with the command to run; it never skips.
//
// What the server looks like: plain HTTP on 127.0.0.1:<free port>, path-style
// buckets, root credentials AccessKey/SecretKey, region Region, objects as
// files under t.TempDir() (metadata in user xattrs, so the temp dir must be
// on a filesystem with them, as ext4, xfs and btrfs are), and one empty
// bucket created by Start.
package tests3

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"codeberg.org/provenix/provenix/internal/testproc"
)

// Version is the versitygw release scripts/versitygw.sh builds.
const Version = "1.8.0"

// BuildCommand is what a developer runs, from the repository root, when the
// binary is missing.
const BuildCommand = "scripts/versitygw.sh build"

// Fixed root credentials and region of every server.
const (
	AccessKey = "provenix-test-access"
	SecretKey = "provenix-test-secret-key-0123456789"
	Region    = "us-east-1"
)

const healthPath = "/provenix-health"

// Server is one running versitygw. Its fields are read-only.
type Server struct {
	Endpoint    string // 127.0.0.1:<port>, no scheme (minio-go style)
	URL         string // http://127.0.0.1:<port>
	Bucket      string // created empty by Start
	Dir         string // the POSIX backend's root: Dir/<bucket>/<key>
	StartupTime time.Duration
}

// BinaryPath is where Start looks for the server binary.
func BinaryPath() string {
	return testproc.Binary("PROVENIX_VERSITYGW", "versitygw-"+Version, "versitygw")
}

// Start runs a fresh server with one empty bucket for the test and stops it
// in t.Cleanup, dumping its output when the test failed.
func Start(t testing.TB) *Server {
	t.Helper()
	return StartIn(t, "")
}

// StartIn is Start with the POSIX backend's root in dir (which must not
// exist yet, on a filesystem with user xattrs), or in a fresh temporary
// directory when dir is "": a test can put it on a small tmpfs to see the
// server's disk fill up.
func StartIn(t testing.TB, dir string) *Server {
	t.Helper()
	bin := BinaryPath()
	testproc.Require(t, "tests3", bin, BuildCommand, "PROVENIX_VERSITYGW")
	work := t.TempDir()
	if dir == "" {
		dir = filepath.Join(work, "data")
	}
	s := &Server{
		Bucket: "cache",
		Dir:    dir,
	}
	// The POSIX backend serves each top-level directory as a bucket, so
	// creating the directory creates the bucket without a signed request.
	if err := os.MkdirAll(filepath.Join(s.Dir, s.Bucket), 0o755); err != nil {
		t.Fatalf("tests3: %v", err)
	}
	port := testproc.FreePort(t)
	s.Endpoint = fmt.Sprintf("127.0.0.1:%d", port)
	s.URL = "http://" + s.Endpoint

	s.StartupTime = testproc.Start(t, testproc.Spec{
		Prefix: "tests3", Name: "versitygw", Bin: bin, LogPath: filepath.Join(work, "versitygw.log"),
		Args: []string{
			"--access", AccessKey,
			"--secret", SecretKey,
			"--region", Region,
			"--port", s.Endpoint,
			"--health", healthPath,
			"--quiet",
			"posix", s.Dir,
		},
		Ready: testproc.HTTPOK(s.URL + healthPath),
	})
	return s
}
