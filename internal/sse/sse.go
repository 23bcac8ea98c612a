// Package sse writes and reads Server-Sent Events (the WHATWG HTML
// "server-sent events" wire format): the API's live stream (GET
// /api/v1/watch) and the CLI's reader of it. The format is a few lines of
// text per message; a library for it would bring more than it saves, so
// this package is hand-written and tested on its own (docs/architecture.md).
package sse

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
)

// Message is one event of a stream.
type Message struct {
	// ID is the event's id ("": none); a client that reconnects sends the
	// last one it got as Last-Event-ID.
	ID string
	// Event is the event's type ("": the default, "message").
	Event string
	// Data is the event's data; lines are joined with "\n".
	Data string
}

// Writer writes events to an HTTP response, flushing each.
type Writer struct {
	w io.Writer
	f http.Flusher
}

// NewWriter starts an event stream on w: it sets the headers and sends
// them. It fails if w cannot flush (every message must leave at once).
func NewWriter(w http.ResponseWriter) (*Writer, error) {
	f, ok := w.(http.Flusher)
	if !ok {
		return nil, errors.New("sse: the response cannot be flushed")
	}
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	// A proxy in front must pass each event as it comes.
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	f.Flush()
	return &Writer{w: w, f: f}, nil
}

// Send writes one message. An id or event type holding a line break is
// refused: it would end the field early and inject the rest.
func (w *Writer) Send(m Message) error {
	if strings.ContainsAny(m.ID, "\r\n\x00") || strings.ContainsAny(m.Event, "\r\n") {
		return fmt.Errorf("sse: id %q or event %q holds a line break", m.ID, m.Event)
	}
	var b strings.Builder
	if m.ID != "" {
		b.WriteString("id: " + m.ID + "\n")
	}
	if m.Event != "" {
		b.WriteString("event: " + m.Event + "\n")
	}
	for _, line := range strings.Split(strings.ReplaceAll(m.Data, "\r\n", "\n"), "\n") {
		b.WriteString("data: " + line + "\n")
	}
	b.WriteString("\n")
	if _, err := io.WriteString(w.w, b.String()); err != nil {
		return err
	}
	w.f.Flush()
	return nil
}

// Comment writes a comment line, which clients ignore: a keepalive that
// lets both ends notice a dead connection.
func (w *Writer) Comment(text string) error {
	if _, err := io.WriteString(w.w, ": "+strings.ReplaceAll(text, "\n", " ")+"\n\n"); err != nil {
		return err
	}
	w.f.Flush()
	return nil
}

// Reader reads the messages of a stream.
type Reader struct {
	r *bufio.Reader
}

// NewReader reads events from r.
func NewReader(r io.Reader) *Reader { return &Reader{r: bufio.NewReaderSize(r, 64<<10)} }

// Next returns the next message; io.EOF when the stream ended between
// messages (a message cut off by the end is dropped, as the format says).
func (r *Reader) Next() (Message, error) {
	var m Message
	var data []string
	seen := false
	for {
		line, err := r.r.ReadString('\n')
		if err != nil {
			if errors.Is(err, io.EOF) {
				return Message{}, io.EOF
			}
			return Message{}, err
		}
		line = strings.TrimSuffix(strings.TrimSuffix(line, "\n"), "\r")
		if line == "" {
			if !seen {
				continue
			}
			m.Data = strings.Join(data, "\n")
			return m, nil
		}
		if strings.HasPrefix(line, ":") {
			continue
		}
		field, value, _ := strings.Cut(line, ":")
		value = strings.TrimPrefix(value, " ")
		switch field {
		case "id":
			m.ID, seen = value, true
		case "event":
			m.Event, seen = value, true
		case "data":
			data, seen = append(data, value), true
		}
	}
}
