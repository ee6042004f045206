package main

import (
	"crypto/sha256"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nix-community/go-nix/pkg/nixbase32"

	"codeberg.org/provenix/provenix/cache-push/store"
	"codeberg.org/provenix/provenix/cache-push/store/local"
	"codeberg.org/provenix/provenix/cache-push/store/s3"
	"codeberg.org/provenix/provenix/internal/testctx"
	"codeberg.org/provenix/provenix/internal/tests3"
	"codeberg.org/provenix/provenix/up"
)

// TestEndToEndChunked: `up --chunking fastcdc` stores a NAR of several
// MiB as chunks (in a directory, and in S3), stock nix substitutes it from
// the stack and from `cache serve --chunking fastcdc`, and the bytes served
// are those the narinfo's FileHash and FileSize describe.
func TestEndToEndChunked(t *testing.T) {
	busybox := requireNix(t)
	for _, where := range []string{"dir", "s3"} {
		t.Run(where, func(t *testing.T) {
			ctx := testctx.New(t, 5*time.Minute)
			dir := t.TempDir()
			cfg := up.Config{DataDir: dir, Chunking: "fastcdc"}
			var serveArgs []string
			var raw store.Store // the cache as stored, chunk lists and all
			if where == "s3" {
				srv := tests3.Start(t)
				cfg.S3 = s3Options(srv, "tenants/c")
				serveArgs = s3Args(t, srv, "tenants/c")
				bucket, err := s3.New(*s3Options(srv, "tenants/c"))
				if err != nil {
					t.Fatal(err)
				}
				raw = bucket
			} else {
				serveArgs = []string{"--dir", filepath.Join(dir, "cache")}
				st, err := local.New(filepath.Join(dir, "cache"))
				if err != nil {
					t.Fatal(err)
				}
				raw = st
			}
			stack := startStack(t, cfg)
			p := stack.Paths()
			wd, _ := os.Getwd()
			out := buildFile(t, ctx, filepath.Join(wd, "testdata", "big.nix"), "big", busybox, "--data-dir", dir).Outputs[0]
			ni := waitNarinfo(t, stack.CacheURL(), out.Path)

			list, err := store.ReadAll(ctx, raw, ni.URL, 1<<20)
			if err != nil || !strings.HasPrefix(string(list), "provenix-chunk-list 1\n") {
				t.Fatalf("%s as stored: %.40q, %v; want a chunk list", ni.URL, list, err)
			}
			if n := strings.Count(string(list), "\n") - 2; n < 20 {
				t.Errorf("the %d-byte NAR is %d chunks, want many", ni.NarSize, n)
			}
			// The file served is the one the narinfo describes.
			resp, err := http.Get(stack.CacheURL() + "/" + ni.URL)
			if err != nil {
				t.Fatal(err)
			}
			body, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			sum := sha256.Sum256(body)
			if err != nil || uint64(len(body)) != ni.FileSize || "sha256:"+nixbase32.EncodeToString(sum[:]) != ni.FileHash.String() ||
				resp.Header.Get("Content-Length") != strconv.Itoa(len(body)) {
				t.Errorf("served %d bytes (Content-Length %s), sha256 %s; the narinfo says %d bytes, %s",
					len(body), resp.Header.Get("Content-Length"), nixbase32.EncodeToString(sum[:]), ni.FileSize, ni.FileHash)
			}

			requireSubstitutes(t, ctx, stack.CacheURL(), p.CachePub(), out)
			serveURL := serveCache(t, ctx, append([]string{"--data-dir", t.TempDir(), "--chunking", "fastcdc"}, serveArgs...)...)
			requireSubstitutes(t, ctx, serveURL, p.CachePub(), out)
			if where != "dir" {
				return
			}
			// cache gc --chunking fastcdc, keeping nothing: the path
			// goes, and with it every chunk.
			stack.Close(ctx)
			stdout, stderr, code := cli(t, ctx, "cache", "gc", "--chunking", "fastcdc", "--dir", filepath.Join(dir, "cache"), "--max-age", "1ms", "--grace", "1ms")
			chunks, _ := filepath.Glob(filepath.Join(dir, "cache", "chunks", "*", "*"))
			if code != 0 || !strings.Contains(stdout, "chunks no NAR uses") || len(chunks) != 0 {
				t.Errorf("cache gc: exit %d, %d chunks left\n%s\n%s", code, len(chunks), stdout, stderr)
			}
		})
	}
}
