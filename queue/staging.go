package queue

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// The staging bucket's wire layout is nats.go's Object Store layout
// (ADR-20): Stage writes it itself (see Stage for why), OpenStaged and
// DeleteStaged use nats.go's reader, so both sides must agree.
const (
	stagingStream       = "OBJ_" + BucketStaging
	stagingChunksPrefix = "$O." + BucketStaging + ".C."
	stagingMetaPrefix   = "$O." + BucketStaging + ".M."

	// stageChunkSize is nats.go's default chunk size: any server's
	// max_payload allows it.
	stageChunkSize = 128 << 10
	// stageWindow is how many chunks Stage has in flight (published, ack
	// not yet received): 8 MiB. It bounds Stage's memory and the server's
	// ingest queue, and is enough to keep a LAN link busy.
	stageWindow = 64
	// stageAckTimeout fails a chunk whose ack does not come.
	stageAckTimeout = 30 * time.Second
	// stageCleanupTimeout bounds removing a failed upload's chunks; it
	// runs even when the caller's ctx is already cancelled.
	stageCleanupTimeout = 30 * time.Second

	// StagingTimeout bounds Stage, and the whole read of an OpenStaged
	// object, when the context has no deadline. Object Store calls
	// otherwise fall back to nats.go's 5 s default, which a NAR of a few
	// GiB cannot meet; pass a ctx with a deadline to choose another bound.
	StagingTimeout = time.Hour

	maxKeyLen = 512
)

// StagedInfo describes a staged object.
type StagedInfo struct {
	Key  string
	Size uint64
	// Digest is the Object Store's own digest string, "SHA-256=" followed
	// by the base64url SHA-256 of the content, as
	// nats.go writes it.
	Digest string
	// Reused is true when Stage found the same content already staged
	// under Key and did not read its reader.
	Reused bool
}

// Stage streams r into the staging bucket under key (normally
// StagingKey(narHash)) and returns what was stored. Memory use is bounded
// by stageWindow chunks whatever the size. A ctx without deadline gets
// StagingTimeout.
//
// Reuse: when key is a content-addressed StagingKey ("nar/<sha256 hex>")
// and an object whose digest equals that hash is already staged, less
// than half the stream's MaxAge ago, Stage returns its info with Reused
// set and leaves r unread (the caller may close or drain it); it writes a
// fresh meta for it (see reuse). Any other existing object under key is
// replaced; readers of the old object then fail and must retry.
//
// Failure: if r fails, ctx ends or the server refuses a chunk, Stage
// removes the chunks it wrote before returning (with its own short
// timeout, even when ctx is cancelled), so a failed upload leaves nothing
// behind. If that removal fails too, both errors are returned. Stage
// cannot interrupt a Read blocked in r: a reader that ends with ctx (a
// pipe from an exec.CommandContext, say) is the caller's part. A publish
// the account's permissions deny fails with ErrPermissionDenied.
//
// Why not nats.go's ObjectStore.Put: on a cancelled ctx it purges the
// partial chunks with that same cancelled ctx, so the purge never happens
// and the chunks stay (nor can we clean up after it: it does not reveal
// the chunk subject); and its async window is 4000 chunks (500 MiB),
// enough to overrun the server's ingest queue (429) on a large NAR.
func (c *Conn) Stage(ctx context.Context, key string, r io.Reader) (StagedInfo, error) {
	if err := validKey(key); err != nil {
		return StagedInfo{}, fmt.Errorf("queue: stage: %w", err)
	}
	ctx, cancel := withDefaultTimeout(ctx, StagingTimeout)
	defer cancel()
	// Single requests get DefaultTimeout, not the hour of the whole
	// upload: one sent to a leader that just died is never answered.
	rctx, rcancel := context.WithTimeout(ctx, DefaultTimeout)
	defer rcancel()
	_, stream, err := c.staging(rctx)
	if err != nil {
		return StagedInfo{}, fmt.Errorf("queue: stage %s: %w", key, err)
	}
	if scope, ok := KeyScope(key); ok {
		return c.stageScoped(ctx, rctx, stream, key, scope, r)
	}
	old, oldSeq, err := lastMeta(rctx, stream, key)
	if err != nil && !errors.Is(err, ErrNotFound) && !errors.Is(err, ErrCorrupt) {
		return StagedInfo{}, fmt.Errorf("queue: stage %s: %w", key, err)
	}
	if old != nil && !old.Deleted && contentMatchesKey(key, old.Digest) {
		// The digest is the uploader's claim, and anyone who may stage
		// may have made it: reuse only content read back whole that
		// matches it (hence the key). Anything else is uploaded again
		// over it. Its age counts from its first chunk, the first to
		// expire, read first: content too old for reuse is not read.
		fctx, fcancel := context.WithTimeout(ctx, DefaultTimeout)
		first, err := stream.GetMsg(fctx, 1, jetstream.WithGetMsgSubject(stagingChunksPrefix+old.NUID))
		fcancel()
		if err == nil && fresh(stream, first.Time) {
			err := c.verifyStaged(ctx, key)
			if err == nil && c.reuse(ctx, stream, old, first.Time, oldSeq) {
				return StagedInfo{Key: key, Size: old.Size, Digest: old.Digest, Reused: true}, nil
			}
			if err != nil && !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrNotFound) {
				return StagedInfo{}, fmt.Errorf("queue: stage %s: %w", key, err)
			}
		}
	}

	info, err := c.putObject(ctx, stream, key, rand.Text(), layoutPlain, r)
	if err != nil {
		return StagedInfo{}, fmt.Errorf("queue: stage %s: %w", key, mapJSError(err))
	}
	if old != nil && !old.Deleted && old.NUID != info.NUID {
		// The replaced object's chunks, as nats.go does. Best effort: the
		// new object is complete either way, and leftovers (a role
		// that may not purge, see RunnerPermissions) are the garbage
		// collector's.
		pctx, pcancel := context.WithTimeout(context.WithoutCancel(ctx), stageCleanupTimeout)
		_ = c.denyAware(pctx, jsAPIFor(stagingStream, ""), func(ctx context.Context) error {
			return purgeChunks(ctx, stream, old.NUID, 0)
		})
		pcancel()
	}
	return StagedInfo{Key: key, Size: info.Size, Digest: info.Digest}, nil
}

// verifyStaged reads key's object whole; the reader checks it against
// the meta's digest.
func (c *Conn) verifyStaged(ctx context.Context, key string) error {
	rc, _, err := c.OpenStaged(ctx, key)
	if err != nil {
		return err
	}
	defer rc.Close()
	_, err = io.Copy(io.Discard, rc)
	return err
}

// stageLayout is how putObject lays an object's chunks out.
type stageLayout int

const (
	// layoutPlain: nats.go's Object Store layout, for unscoped keys.
	layoutPlain stageLayout = iota
	// layoutRollup: a scoped key on a staging stream that still allows
	// rollups (made before ensureStaging refused them; its pushers may
	// predate layoutCommit): the first chunk rolls the subject up, all
	// chunks go to it, and the last carries the count (chunksHeader).
	layoutRollup
	// layoutCommit: a scoped key. The chunks but the last go to a
	// subject of the upload's own (uploadSubject), and once all are
	// stored the last goes to the key's subject with the upload's id
	// and count: a commit, so the subject's last message is always the
	// end of a finished upload, whatever other uploads of the key do at
	// the same time or left unfinished. An object of one chunk is that
	// one message.
	layoutCommit
)

// rollupRefused reports whether err is a stream's refusal of a rollup.
func rollupRefused(err error) bool {
	var api *jetstream.APIError
	return errors.As(err, &api) && api.ErrorCode == jsErrRollupFailed
}

// uploadSubject is the subject of upload's chunks (but the last) of the
// scoped object on chunk subject id.
func uploadSubject(id, upload string) string { return stagingChunksPrefix + id + "." + upload }

// putObject writes r's chunks under chunk subject id with a bounded
// window of async publishes, then the meta message that makes the object
// visible. On any failure it removes its chunks, if it may. Scoped
// layouts write at least one chunk, so that there is a last, and leave a
// failed upload to the garbage collector: their users may not purge.
func (c *Conn) putObject(ctx context.Context, stream jetstream.Stream, key, id string, layout stageLayout, r io.Reader) (*jetstream.ObjectInfo, error) {
	chunkSubj := stagingChunksPrefix + id
	scoped := layout != layoutPlain
	upload, uploadSubj := "", chunkSubj
	if layout == layoutCommit {
		upload = rand.Text()
		uploadSubj = uploadSubject(id, upload)
	}

	// A denied publish only times out (see Conn.publish): stop at the
	// first permission violation on our subjects instead.
	ctx, cancelCause := context.WithCancelCause(ctx)
	defer cancelCause(nil)
	defer c.watchDenied(chunkSubj, cancelCause)()
	if uploadSubj != chunkSubj {
		defer c.watchDenied(uploadSubj, cancelCause)()
	}
	defer c.watchDenied(metaSubject(key), cancelCause)()

	// The async publishes of an object of several chunks go through a
	// JetStream handle of its own, so the acks it waits for are its alone
	// and CleanupPublisher does not touch other publishers. The handle
	// subscribes a wildcard inbox for its acks, which the server matches
	// against its whole subject cache when it adds and removes it: an
	// object of one chunk, most NARs and closures, does without (see
	// below). Made for the second chunk.
	var pub jetstream.JetStream
	// A reader that tells whether a full first chunk is the last; reads
	// of a chunk's size go straight to r.
	br := bufio.NewReaderSize(r, 16)
	r = br
	defer func() {
		if pub != nil {
			pub.CleanupPublisher()
		}
	}()

	fail := func(err error) (*jetstream.ObjectInfo, error) {
		if scoped {
			return nil, err
		}
		// Chunks in flight are waited for, unless the server denies our
		// publishes: then none will be stored, and their acks never come.
		wait := pub != nil && !errors.Is(context.Cause(ctx), ErrPermissionDenied)
		if cerr := c.removeChunks(ctx, pub, stream, chunkSubj, wait); cerr != nil && !errors.Is(cerr, ErrPermissionDenied) {
			return nil, errors.Join(err, cerr)
		}
		return nil, err
	}
	// publish sends m and waits for its ack through the connection's
	// request inbox, as the meta's below.
	publish := func(m *nats.Msg, chunk uint32) error {
		pctx, cancel := context.WithTimeout(ctx, stageAckTimeout)
		_, err := c.js.PublishMsg(pctx, m)
		cancel()
		if err != nil {
			if cause := context.Cause(ctx); cause != nil {
				err = cause
			}
			return fmt.Errorf("chunk %d: %w", chunk, err)
		}
		return nil
	}

	// A ring of in-flight chunks. A buffer is reused only once its chunk
	// is acked: nats.go may resend the message (no-responders retry)
	// until then.
	type inflight struct {
		f   jetstream.PubAckFuture
		buf []byte
	}
	var (
		ring         [stageWindow]inflight
		head, queued int
		h            = sha256.New()
		size         uint64
		chunks       uint32
		commit       *nats.Msg // layoutCommit's last chunk, sent once the others are stored
	)
	for {
		if err := ctx.Err(); err != nil {
			return fail(context.Cause(ctx))
		}
		var buf []byte
		if queued == stageWindow {
			oldest := &ring[head]
			if err := waitAck(ctx, oldest.f); err != nil {
				return fail(fmt.Errorf("chunk %d: %w", chunks-uint32(queued), err))
			}
			buf, *oldest = oldest.buf, inflight{}
			head, queued = (head+1)%stageWindow, queued-1
		} else {
			buf = make([]byte, stageChunkSize)
		}
		// ReadFull: whole chunks whatever r's read sizes, so small reads
		// do not turn into many small messages.
		n, rerr := io.ReadFull(r, buf)
		last := rerr == io.EOF || rerr == io.ErrUnexpectedEOF
		if rerr == nil && (chunks == 0 || scoped) {
			// A full chunk may be the last: the only one, or the one a
			// scoped upload marks.
			_, perr := br.Peek(1)
			last = perr == io.EOF
		}
		if n > 0 || (scoped && chunks == 0) {
			h.Write(buf[:n])
			m := &nats.Msg{Subject: chunkSubj, Data: buf[:n], Header: nats.Header{}}
			switch {
			case layout == layoutRollup && chunks == 0:
				m.Header.Set(jetstream.MsgRollup, jetstream.MsgRollupSubject)
			case layout == layoutCommit:
				m.Header.Set(uploadHeader, upload)
				if !last {
					m.Subject = uploadSubj
				}
			}
			if scoped && last {
				// The count on the last chunk lets a reader open the
				// object with one get of its subject's last message
				// (openScoped); it is written in the uploader's own scope
				// and the content is hashed by whoever relies on it.
				m.Header.Set(chunksHeader, strconv.FormatUint(uint64(chunks)+1, 10))
			}
			if layout == layoutRollup && chunks == 0 {
				// Sent alone, so that a stream that refuses rollups
				// now (ensureStaging changed it since this connection
				// looked) refuses it before anything else is sent: the
				// upload then goes on as a commit.
				err := publish(m, 0)
				if rollupRefused(err) {
					// Refresh the connection's view of the stream, so
					// that its next uploads are commits from the start.
					ictx, cancel := context.WithTimeout(ctx, DefaultTimeout)
					_, _ = stream.Info(ictx)
					cancel()
					layout, upload = layoutCommit, rand.Text()
					uploadSubj = uploadSubject(id, upload)
					defer c.watchDenied(uploadSubj, cancelCause)()
					m.Header.Del(jetstream.MsgRollup)
					m.Header.Set(uploadHeader, upload)
					if !last {
						m.Subject = uploadSubj
					}
					err = publish(m, 0)
				}
				if err != nil {
					return fail(err)
				}
				size, chunks = uint64(n), 1
				if last {
					break
				}
				if rerr != nil {
					return fail(fmt.Errorf("read: %w", rerr))
				}
				continue
			}
			if chunks == 0 && last {
				if err := publish(m, 0); err != nil {
					return fail(err)
				}
				size, chunks = uint64(n), 1
				break
			}
			size += uint64(n)
			if layout == layoutCommit && last {
				commit = m
				chunks++
				break
			}
			if pub == nil {
				var err error
				if pub, err = jetstream.New(c.nc, jetstream.WithPublishAsyncTimeout(stageAckTimeout)); err != nil {
					return fail(err)
				}
			}
			f, err := pub.PublishMsgAsync(m)
			if err != nil {
				return fail(fmt.Errorf("chunk %d: %w", chunks, err))
			}
			ring[(head+queued)%stageWindow] = inflight{f: f, buf: buf}
			queued++
			chunks++
		}
		if last {
			break
		}
		if rerr != nil {
			return fail(fmt.Errorf("read: %w", rerr))
		}
	}
	for ; queued > 0; head, queued = (head+1)%stageWindow, queued-1 {
		if err := waitAck(ctx, ring[head].f); err != nil {
			return fail(fmt.Errorf("chunk %d: %w", chunks-uint32(queued), err))
		}
	}
	if commit != nil {
		if err := publish(commit, chunks-1); err != nil {
			return fail(err)
		}
	}

	info := &jetstream.ObjectInfo{
		ObjectMeta: jetstream.ObjectMeta{
			Name: key,
			Opts: &jetstream.ObjectMetaOptions{ChunkSize: stageChunkSize},
		},
		Bucket: BucketStaging,
		NUID:   id,
		Size:   size,
		Chunks: chunks,
		Digest: jetstream.GetObjectDigestValue(h),
	}
	if err := c.writeMeta(ctx, info); err != nil {
		// The meta may have been stored with only its ack lost (timeout,
		// cancel): then the object is complete and must not lose its
		// chunks.
		if metaIs(ctx, stream, key, id) {
			return info, nil
		}
		if cause := context.Cause(ctx); errors.Is(cause, ErrPermissionDenied) {
			err = cause
		}
		return fail(fmt.Errorf("publish meta: %w", err))
	}
	return info, nil
}

// writeMeta publishes info as its key's meta. It follows the earlier ones
// of the key, which stay until they expire or staging GC trims them:
// readers take a subject's last message. With opts (a
// jetstream.WithExpectLastSequencePerSubject) the server stores it only
// if they hold.
func (c *Conn) writeMeta(ctx context.Context, info *jetstream.ObjectInfo, opts ...jetstream.PublishOpt) error {
	m := *info
	m.ModTime = time.Time{} // the message's own time is the meta's
	data, err := json.Marshal(&m)
	if err != nil {
		return fmt.Errorf("encode meta: %w", err)
	}
	meta := nats.NewMsg(metaSubject(info.Name))
	meta.Data = data
	ctx, cancel := context.WithTimeout(ctx, DefaultTimeout)
	defer cancel()
	_, err = c.js.PublishMsg(ctx, meta, opts...)
	return err
}

// lastMeta reads key's meta (the last message of its meta subject, its
// time the meta's ModTime) and its stream sequence: ErrNotFound when it
// has none, ErrCorrupt, with the sequence, when it does not parse.
func lastMeta(ctx context.Context, stream jetstream.Stream, key string) (*jetstream.ObjectInfo, uint64, error) {
	m, err := stream.GetLastMsgForSubject(ctx, metaSubject(key))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil, 0, fmt.Errorf("%w: no meta for %s", ErrNotFound, key)
	}
	if err != nil {
		return nil, 0, mapJSError(err)
	}
	var info jetstream.ObjectInfo
	if err := json.Unmarshal(m.Data, &info); err != nil {
		return nil, m.Sequence, fmt.Errorf("%w: meta of %s: %w", ErrCorrupt, key, err)
	}
	info.ModTime = m.Time
	return &info, m.Sequence, nil
}

// reuse reports whether Stage may hand out content already staged as
// info, its first chunk stored at stored and its key's meta at sequence
// metaSeq (0 when the key has no meta naming the content), and if so
// writes a fresh meta for it:
//   - only while the content is fresh: see fresh;
//   - the fresh meta because staging GC goes by the meta's time. It is
//     stored only if metaSeq is still the key's last meta: staging GC
//     removes the meta before the chunks and looks again before removing
//     these (deleteIfSame), so either this write fails (GC removed the
//     meta, whenever it was read) and the content is uploaded again, or
//     GC sees it and keeps the chunks. A meta another
//     Stage wrote for the same content meanwhile (two runners of a
//     builder reusing it at once) is taken as the one read.
func (c *Conn) reuse(ctx context.Context, stream jetstream.Stream, info *jetstream.ObjectInfo, stored time.Time, metaSeq uint64) bool {
	if metaSeq == 0 || !fresh(stream, stored) {
		return false
	}
	for range 2 {
		err := c.writeMeta(ctx, info, jetstream.WithExpectLastSequencePerSubject(metaSeq))
		if err == nil {
			return true
		}
		cur, seq, rerr := lastMeta(ctx, stream, info.Name)
		if rerr != nil || cur.Deleted || cur.NUID != info.NUID || seq == metaSeq {
			return false
		}
		metaSeq = seq
	}
	return false
}

// fresh reports whether content first stored at stored is young enough
// for Stage to hand it out again instead of uploading it: the stream's
// MaxAge expires each message on its own, and a result naming reused
// content must find it when a pusher gets to it, which may be hours later
// after an outage. Content past half the MaxAge is uploaded again, which
// gives it a whole MaxAge.
func fresh(stream jetstream.Stream, stored time.Time) bool {
	maxAge := stream.CachedInfo().Config.MaxAge
	return maxAge <= 0 || time.Since(stored) < maxAge/2
}

func waitAck(ctx context.Context, f jetstream.PubAckFuture) error {
	select {
	case <-f.Ok():
		return nil
	case err := <-f.Err():
		return err
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

// removeChunks purges a failed upload's chunks. It first lets the chunks
// already sent land (or fail), otherwise they could be stored after the
// purge and stay. It runs on its own timeout: the usual reason to be here
// is that ctx was cancelled.
func (c *Conn) removeChunks(ctx context.Context, pub jetstream.JetStream, stream jetstream.Stream, chunkSubj string, wait bool) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), stageCleanupTimeout)
	defer cancel()
	if wait {
		select {
		case <-pub.PublishAsyncComplete():
		case <-ctx.Done():
		}
	}
	// A role that may not purge (see RolePermissions) must not wait out
	// the timeout here.
	err := c.denyAware(ctx, jsAPIFor(stagingStream, ""), func(ctx context.Context) error {
		return stream.Purge(ctx, jetstream.WithPurgeSubject(chunkSubj))
	})
	if err != nil {
		return fmt.Errorf("remove partial upload %s: %w", chunkSubj, err)
	}
	return nil
}

// metaIs reports whether key's current meta names chunk subject id.
func metaIs(ctx context.Context, stream jetstream.Stream, key, id string) bool {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), stageCleanupTimeout)
	defer cancel()
	info, _, err := lastMeta(ctx, stream, key)
	return err == nil && !info.Deleted && info.NUID == id
}

// DeleteStaged removes the object under key and its chunks. An absent
// object is not an error: deleting is what several pushers may race to do.
func (c *Conn) DeleteStaged(ctx context.Context, key string) error {
	if err := validKey(key); err != nil {
		return fmt.Errorf("queue: delete staged: %w", err)
	}
	ctx, cancel := withDefaultTimeout(ctx, DefaultTimeout)
	defer cancel()
	obs, stream, err := c.staging(ctx)
	if err != nil {
		return fmt.Errorf("queue: delete staged %s: %w", key, err)
	}
	id := ""
	if scope, ok := KeyScope(key); ok {
		// The content is where the key says, whatever a meta claims.
		id = scopedChunkID(key, scope)
	} else {
		info, err := obs.GetInfo(ctx, key)
		if errors.Is(err, jetstream.ErrObjectNotFound) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("queue: delete staged %s: %w", key, mapJSError(err))
		}
		id = info.NUID
	}
	if err := purgeObject(ctx, stream, key, id); err != nil {
		return fmt.Errorf("queue: delete staged %s: %w", key, err)
	}
	return nil
}

// purgeObject removes key's metas and the chunks on chunk subject id (and
// its uploads').
// (nats.go's ObjectStore.Delete marks the object deleted with a rollup,
// which the staging stream refuses.)
func purgeObject(ctx context.Context, stream jetstream.Stream, key, id string) error {
	if err := purgeUpTo(ctx, stream, metaSubject(key), 0); err != nil {
		return err
	}
	return purgeChunks(ctx, stream, id, 0)
}

// purgeChunks removes the chunks on chunk subject id and, for a scoped
// object, on its uploads' subjects: all of them, or when upTo is not 0
// those stored before stream sequence upTo.
func purgeChunks(ctx context.Context, stream jetstream.Stream, id string, upTo uint64) error {
	if err := purgeUpTo(ctx, stream, stagingChunksPrefix+id, upTo); err != nil {
		return err
	}
	if strings.Contains(id, ".") {
		// A scoped object: its uploads' own subjects too (layoutCommit).
		return purgeUpTo(ctx, stream, stagingChunksPrefix+id+".>", upTo)
	}
	return nil
}

// purgeUpTo removes what subj holds: all of it, or when upTo is not 0 the
// messages stored before stream sequence upTo.
func purgeUpTo(ctx context.Context, stream jetstream.Stream, subj string, upTo uint64) error {
	opts := []jetstream.StreamPurgeOpt{jetstream.WithPurgeSubject(subj)}
	if upTo != 0 {
		opts = append(opts, jetstream.WithPurgeSequence(upTo))
	}
	return mapJSError(stream.Purge(ctx, opts...))
}

// staging returns the staging bucket's handles, looked up once per Conn.
func (c *Conn) staging(ctx context.Context) (jetstream.ObjectStore, jetstream.Stream, error) {
	c.mu.Lock()
	obs, stream := c.stagingObs, c.stagingStream
	c.mu.Unlock()
	if obs != nil {
		return obs, stream, nil
	}
	obs, err := c.js.ObjectStore(ctx, BucketStaging)
	if err != nil {
		return nil, nil, fmt.Errorf("bucket %s (EnsureStreams not run?): %w", BucketStaging, mapJSError(err))
	}
	stream, err = c.js.Stream(ctx, stagingStream)
	if err != nil {
		return nil, nil, fmt.Errorf("bucket %s: %w", BucketStaging, mapJSError(err))
	}
	c.mu.Lock()
	c.stagingObs, c.stagingStream = obs, stream
	c.mu.Unlock()
	return obs, stream, nil
}

func metaSubject(key string) string {
	return stagingMetaPrefix + base64.URLEncoding.EncodeToString([]byte(key))
}

// contentMatchesKey reports whether key is a StagingKey whose hash is the
// object's digest: then the stored object is, by its digest, the content
// the key names. The digest is the uploader's claim; the reader checks it
// against the bytes, so a false claim shows up as ErrCorrupt, not as
// wrong content.
func contentMatchesKey(key, digest string) bool {
	hexHash, ok := strings.CutPrefix(key, StagingKey(""))
	if !ok || len(hexHash) != 2*sha256.Size {
		return false
	}
	sum, err := hex.DecodeString(hexHash)
	if err != nil {
		return false
	}
	got, err := jetstream.DecodeObjectDigest(digest)
	return err == nil && string(got) == string(sum)
}

// validKey accepts keys made of letters, digits and "-._/+=:@", at most
// maxKeyLen bytes: enough for StagingKey and readable in logs, with
// nothing a shell, a log line or a file name would misread.
func validKey(key string) error {
	if key == "" {
		return fmt.Errorf("%w: empty key", ErrInvalidName)
	}
	if len(key) > maxKeyLen {
		return fmt.Errorf("%w: key longer than %d bytes", ErrInvalidName, maxKeyLen)
	}
	for i := 0; i < len(key); i++ {
		b := key[i]
		if ('a' <= b && b <= 'z') || ('A' <= b && b <= 'Z') || ('0' <= b && b <= '9') || strings.IndexByte("-._/+=:@", b) >= 0 {
			continue
		}
		return fmt.Errorf("%w: key %q has a forbidden character at %d", ErrInvalidName, key, i)
	}
	return nil
}
