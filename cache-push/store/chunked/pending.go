package chunked

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"codeberg.org/provenix/provenix/cache-push/store"
)

// maxPiece is the longest chunk: a zstd frame longer than this (a file
// compressed as one frame) is cut at this length. A 256 KiB NAR chunk
// compresses to at most about 256 KiB plus a few bytes.
const maxPiece = 1 << 20

// Create starts an object. Its key is known only at Commit, so the bytes
// are cut into chunks as they come; chunks are stored as soon as there are
// two (a narinfo or sidecar, one piece, is then never chunked), under ctx.
func (s *Store) Create(ctx context.Context) (store.Pending, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("chunked: create: %w", err)
	}
	upCtx, cancel := context.WithCancel(ctx)
	return &pending{s: s, ctx: upCtx, cancel: cancel, framed: true, sem: make(chan struct{}, s.o.Uploads)}, nil
}

type pending struct {
	s      *Store
	ctx    context.Context // the uploads'
	cancel context.CancelFunc

	cur    []byte // bytes not yet cut
	framed bool   // the bytes so far were whole zstd frames
	held   []byte // the first piece, until a second one comes
	list   chunkList
	sent   bool // pieces went to the chunk store

	sem      chan struct{}
	wg       sync.WaitGroup
	mu       sync.Mutex
	upErr    error
	finished bool
	writeErr error
}

func (p *pending) Write(b []byte) (int, error) {
	if p.finished {
		return 0, store.ErrFinished
	}
	if p.writeErr != nil {
		return 0, p.writeErr
	}
	n := 0
	for len(b) > 0 {
		if p.cur == nil {
			p.cur = make([]byte, 0, 64<<10)
		}
		take := min(len(b), maxPiece-len(p.cur))
		p.cur = append(p.cur, b[:take]...)
		b, n = b[take:], n+take
		if err := p.cut(false); err != nil {
			p.writeErr = err
			return n, err
		}
	}
	return n, nil
}

// cut emits the complete pieces at the start of cur: whole frames while
// the file is made of frames, else pieces of maxPiece bytes; all of cur
// when final.
func (p *pending) cut(final bool) error {
	for len(p.cur) > 0 {
		n := 0
		if p.framed {
			var err error
			n, err = frameLen(p.cur)
			if err != nil {
				p.framed = false
			}
		}
		if n == 0 && (len(p.cur) >= maxPiece || final) {
			// Not a frame, or a frame too long for one piece: from here
			// on the file is cut by length.
			n, p.framed = min(len(p.cur), maxPiece), false
		}
		if n == 0 {
			return nil
		}
		if err := p.emit(p.cur[:n]); err != nil {
			return err
		}
		rest := len(p.cur) - n
		copy(p.cur, p.cur[n:])
		p.cur = p.cur[:rest]
	}
	return nil
}

// emit adds a piece to the list and stores it, or holds it if it is the
// first.
func (p *pending) emit(piece []byte) error {
	data := bytes.Clone(piece)
	p.list.add(sha256.Sum256(data), int64(len(data)))
	if !p.sent && p.held == nil {
		p.held = data
		return nil
	}
	if p.held != nil {
		if err := p.upload(p.held); err != nil {
			return err
		}
		p.held = nil
	}
	p.sent = true
	return p.upload(data)
}

// upload stores a chunk in the background, at most Uploads at once.
func (p *pending) upload(data []byte) error {
	select {
	case p.sem <- struct{}{}:
	case <-p.ctx.Done():
		return p.failed(p.ctx.Err())
	}
	if err := p.failed(nil); err != nil {
		<-p.sem
		return err
	}
	p.wg.Go(func() {
		defer func() { <-p.sem }()
		if err := p.s.putChunk(p.ctx, data); err != nil {
			p.mu.Lock()
			if p.upErr == nil {
				p.upErr = err
			}
			p.mu.Unlock()
			p.cancel()
		}
	})
	return nil
}

// failed returns the first upload error, or err.
func (p *pending) failed(err error) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.upErr != nil {
		return p.upErr
	}
	if err != nil {
		return fmt.Errorf("chunked: %w", err)
	}
	return nil
}

// putChunk stores data under its hash unless it is there already, and
// rewrites a stored one older than RefreshAge so that gc leaves it alone
// until this write's chunk list is committed.
func (s *Store) putChunk(ctx context.Context, data []byte) error {
	key := chunkKey(sha256.Sum256(data))
	fi, err := s.chunks.Stat(ctx, key)
	switch {
	case err == nil && fi.Size == int64(len(data)) && time.Since(fi.ModTime) < s.o.RefreshAge:
		return nil
	case err != nil && !errors.Is(err, store.ErrNotFound):
		return fmt.Errorf("chunked: %w", err)
	}
	if err := store.Put(ctx, s.chunks, key, bytes.NewReader(data)); err != nil {
		return fmt.Errorf("chunked: %w", err)
	}
	return nil
}

// Commit stores a NAR's last chunks, waits for all of them, then commits
// its chunk list; any other key gets the bytes whole.
func (p *pending) Commit(ctx context.Context, key string) error {
	if p.finished {
		return store.ErrFinished
	}
	defer p.Abort()
	p.finished = true
	if err := checkKey(key); err != nil {
		return err
	}
	if p.writeErr != nil {
		return p.writeErr
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("chunked: commit %s: %w", key, err)
	}
	if !isNAR(key) && !p.sent {
		// A narinfo or a sidecar: at most one piece held, and the rest.
		return store.Put(ctx, p.s.inner, key, io.MultiReader(bytes.NewReader(p.held), bytes.NewReader(p.cur)))
	}
	if err := p.cut(true); err != nil {
		return err
	}
	if p.held != nil {
		if err := p.upload(p.held); err != nil {
			return err
		}
		p.held = nil
	}
	p.wg.Wait()
	if err := p.failed(nil); err != nil {
		return fmt.Errorf("chunked: commit %s: %w", key, err)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("chunked: commit %s: %w", key, err)
	}
	if isNAR(key) {
		// Last: once the list is visible, every chunk it names is.
		return store.Put(ctx, p.s.inner, key, bytes.NewReader(p.list.encode()))
	}
	// A large object that is not a NAR: copy it whole out of its chunks.
	r := newChunkReader(ctx, p.s.chunks, key, p.list.entries)
	defer r.Close()
	return store.Put(ctx, p.s.inner, key, r)
}

// Abort stops the uploads; the chunks already stored stay for gc.
func (p *pending) Abort() error {
	p.finished = true
	p.cancel()
	p.wg.Wait()
	p.cur, p.held = nil, nil
	return nil
}
