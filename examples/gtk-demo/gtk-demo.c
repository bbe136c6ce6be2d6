/* gtk-demo.c: a GTK 4 window that stays responsive while a module works
 *
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * A "mandelbrot" module runs on a pool of worker threads of its own
 * (SparkModuleServer:workers, spark_module_server_start_in_thread()) and
 * renders a zoom into the Mandelbrot set, one 32×32 tile per request:
 * from about 50 µs to a few ms of CPU each, thousands of requests per
 * run. Its handler is declared concurrent (SPARK_HANDLER_FLAGS_CONCURRENT):
 * each worker calls it, and what the calls share is atomic or locked
 * (see Module). The window is the client:
 *
 *   - it keeps TILES_PER_WORKER requests per worker queued with
 *     spark_dispatcher_request_full(); each reply (the tile's pixels)
 *     arrives on the main thread, is copied into the picture, and sends
 *     the next tile;
 *   - the module reports its progress as "progress" commands to a second,
 *     UI-side module server on the main context, with a mailbox of 2 and
 *     the COALESCE overflow policy: however fast the module goes, the main
 *     thread handles at most the newest value (docs/flow-control.md,
 *     "A progress stream");
 *   - Cancel fails every queued request with spark_dispatcher_cancel_all()
 *     and cancels the run's GCancellable, which the tile being rendered
 *     checks after each row;
 *   - the server's metrics (handled, cancelled, pending-high-water,
 *     queue and handler times; notified on the main context at most ten
 *     times a second) are bound to labels with g_object_bind_property_full()
 *     (see demo_bind_metrics()), throughput computed from successive
 *     "handled" values; only the queue depth now ("pending", which is not
 *     notified) is polled; so is the worst stall of the main loop,
 *     measured by a 5 ms timeout (see on_tick()): the responsiveness the
 *     demo is about;
 *   - the module's first message, "background", broadcast to every
 *     worker, lowers each worker thread's priority (nice 10, Linux), so
 *     that on a machine with fewer free cores than busy threads the
 *     rendering yields to the main thread;
 *   - everything the window shows changes at most ten times a second
 *     (refresh_ui(), and the metrics' notifications), and only by
 *     redrawing: no update lays the window out again.
 *
 *   gtk-demo                     the window
 *   gtk-demo --normal-priority   the same, the module at normal priority
 *   gtk-demo --workers=N         the same, with N workers (default: one
 *                                per core but one, see default_workers())
 *   gtk-demo --self-test [--screenshot=FILE] [--stall-limit=MS]
 *                                runs itself: a short run and Cancel (to
 *                                warm GTK up), then a run of 2 s, a
 *                                screenshot, Cancel; checks that every
 *                                request completed once, that work
 *                                stopped, and that the main loop never
 *                                stalled for more than 20 ms (or MS), and that
 *                                the bound labels show the server's final
 *                                metrics; exits 0 only then
 *                                (tests/run-gtk-demo.sh runs it under Xvfb)
 */

/* getrusage (RUSAGE_THREAD), gettid () */
#define _GNU_SOURCE

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <unistd.h>

#include <gtk/gtk.h>
#include <spark-channel.h>

#define IMAGE_WIDTH 384
#define IMAGE_HEIGHT 256
#define TILE 32
#define TILES_X (IMAGE_WIDTH / TILE)
#define TILES_Y (IMAGE_HEIGHT / TILE)
#define TILES_PER_FRAME (TILES_X * TILES_Y)
#define N_FRAMES 120
#define TILES_PER_RUN (TILES_PER_FRAME * N_FRAMES)

/* Requests queued at once, per worker: enough to keep each worker busy
 * while replies travel, few enough that a batch of replies (or of
 * cancellations) costs the main thread little. */
#define TILES_PER_WORKER 16

/* The zoom: a point of the seahorse valley, the width of a pixel in the
 * first frame, and the factor between two frames. */
#define CENTER_X (-0.743643887037151)
#define CENTER_Y (0.131825904205330)
#define FIRST_SCALE (3.0 / IMAGE_WIDTH)
#define ZOOM 0.93

/* How often the window shows what changed (see refresh_ui()). */
#define REFRESH_MS 100

/* Throughput is measured over this many notifications of "handled": one
 * second at the default metrics-interval. */
#define THROUGHPUT_SAMPLES 11

/* The module's thread's nice value (see module_command()). */
#define MODULE_NICE 10

#define TICK_MS 5
#define STALL_LIMIT_MS 20.0
#define SELF_TEST_WORK_USEC (2 * G_USEC_PER_SEC)

/* The calling thread's CPU time in µs (Linux; elsewhere 0). */
static gint64
thread_cpu_time (void)
{
#ifdef RUSAGE_THREAD
  struct rusage usage;

  if (getrusage (RUSAGE_THREAD, &usage) == 0)
    return (gint64) usage.ru_utime.tv_sec * G_USEC_PER_SEC + usage.ru_utime.tv_usec +
           (gint64) usage.ru_stime.tv_sec * G_USEC_PER_SEC + usage.ru_stime.tv_usec;
#endif
  return 0;
}

/* --- the module: runs on the workers' threads --------------------------- */

/* The module's state. Its handler is called by every worker of the pool
 * at once (it is declared SPARK_HANDLER_FLAGS_CONCURRENT), so what the
 * calls share is locked or atomic; the self-test reads the atomics from
 * the main thread. */
typedef struct
{
  SparkDispatcher *progress;   /* to the UI-side progress server; set
                                * before the server starts, then only
                                * read (a dispatcher may be used from any
                                * thread) */
  GMutex lock;
  guint run;                   /* lock: the newest run a tile was rendered for */
  guint tiles_done;            /* lock: tiles of that run rendered */
  gint rendering;              /* atomic: tiles being rendered now */
  gint tiles_rendered;         /* atomic: every tile rendered, all runs */
} Module;

static guint32
palette (guint iterations,
         guint max_iterations)
{
  double t;
  guint r, g, b;

  if (iterations >= max_iterations)
    return 0xff000000;   /* inside the set: black, opaque */

  t = (double) iterations / 64.0;
  r = (guint) (127.5 * (1.0 + cos (6.2832 * (t + 0.00))));
  g = (guint) (127.5 * (1.0 + cos (6.2832 * (t + 0.15))));
  b = (guint) (127.5 * (1.0 + cos (6.2832 * (t + 0.30))));

  /* CAIRO_FORMAT_ARGB32: 0xAARRGGBB in a native word (premultiplied;
   * every pixel is opaque). */
  return 0xff000000 | (r << 16) | (g << 8) | b;
}

/* Renders one tile: "(uuuudu)" run, frame, x, y, scale, max iterations;
 * replies with its pixels ("ay", TILE × TILE × 4 bytes). Checks
 * @cancellable after every row. */
static GVariant *
module_render_tile (Module        *module,
                    GVariant      *parameters,
                    GCancellable  *cancellable,
                    GError       **error)
{
  guint run, frame, x0, y0, max_iterations, tiles_done;
  double scale;
  guint32 *pixels;

  g_variant_get (parameters, "(uuuudu)", &run, &frame, &x0, &y0, &scale, &max_iterations);
  g_return_val_if_fail (x0 + TILE <= IMAGE_WIDTH && y0 + TILE <= IMAGE_HEIGHT, NULL);

  pixels = g_new (guint32, TILE * TILE);
  g_atomic_int_inc (&module->rendering);

  for (guint y = 0; y < TILE; y++)
    {
      double ci = CENTER_Y + ((double) (y0 + y) - IMAGE_HEIGHT / 2.0) * scale;

      if (g_cancellable_set_error_if_cancelled (cancellable, error))
        {
          g_free (pixels);
          (void) g_atomic_int_add (&module->rendering, -1);
          return NULL;
        }

      for (guint x = 0; x < TILE; x++)
        {
          double cr = CENTER_X + ((double) (x0 + x) - IMAGE_WIDTH / 2.0) * scale;
          double zr = 0.0, zi = 0.0, zr2 = 0.0, zi2 = 0.0;
          guint i = 0;

          while (i < max_iterations && zr2 + zi2 <= 4.0)
            {
              zi = 2.0 * zr * zi + ci;
              zr = zr2 - zi2 + cr;
              zr2 = zr * zr;
              zi2 = zi * zi;
              i++;
            }
          pixels[y * TILE + x] = palette (i, max_iterations);
        }
    }

  g_atomic_int_inc (&module->tiles_rendered);
  (void) g_atomic_int_add (&module->rendering, -1);

  /* Count the tile in its run, under the lock: another worker may be
   * counting one of the same run, or (just after Render) the first of the
   * next; a late tile of an earlier run is not counted. */
  g_mutex_lock (&module->lock);
  if (run > module->run)
    {
      module->run = run;
      module->tiles_done = 0;
    }
  tiles_done = run == module->run ? ++module->tiles_done : 0;
  g_mutex_unlock (&module->lock);

  /* Progress goes to the UI-side server: a mailbox of 2 that keeps only
   * the newest "progress". send_command() waits only while the UI is
   * handling the one queued before; its failure (the UI has shut down) is
   * of no consequence to the tile. Two workers' reports may arrive in
   * either order: the UI keeps the highest count of a run. */
  if (tiles_done > 0)
    spark_dispatcher_send_command (module->progress, "progress",
                                   g_variant_new ("(uuu)", run, frame, tiles_done),
                                   NULL, NULL);

  return g_variant_new_from_data (G_VARIANT_TYPE_BYTESTRING, pixels, TILE * TILE * sizeof (guint32),
                                  TRUE, g_free, pixels);
}

static GVariant *
module_request (const char    *name,
                GVariant      *parameters,
                GCancellable  *cancellable,
                gpointer       user_data,
                GError       **error)
{
  if (g_str_equal (name, "render-tile") &&
      g_variant_is_of_type (parameters, G_VARIANT_TYPE ("(uuuudu)")))
    return module_render_tile (user_data, parameters, cancellable, error);

  g_set_error (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_NOT_SUPPORTED,
               "“%s” is not a request of the mandelbrot module", name);
  return NULL;
}

/* "background": lowers the priority of the calling worker's thread (this
 * one: handlers run there) to nice MODULE_NICE, so that the main thread,
 * at 0, gets a CPU as soon as it wakes up, even when every core is busy.
 * It is broadcast (spark_dispatcher_broadcast_command()): each worker
 * handles its own copy on its own thread before its first tile. A module
 * on threads of its own can do this for itself; the library does not
 * touch priorities. Not lower: a thread that hardly ever runs (nice
 * 19, SCHED_IDLE) may be preempted while it holds a lock that the main
 * thread then waits for. */
static gboolean
module_command (const char    *name,
                GVariant      *parameters,
                GCancellable  *cancellable,
                gpointer       user_data,
                GError       **error)
{
  if (g_str_equal (name, "background"))
    {
#ifdef __linux__
      /* Linux keeps a nice value per thread: this one only. */
      if (setpriority (PRIO_PROCESS, (id_t) gettid (), MODULE_NICE) != 0)
        {
          int saved_errno = errno;

          g_set_error (error, G_IO_ERROR, g_io_error_from_errno (saved_errno),
                       "Could not lower the module's thread's priority: %s",
                       g_strerror (saved_errno));
          return FALSE;
        }
      return TRUE;
#else
      g_set_error_literal (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_NOT_SUPPORTED,
                           "Only Linux has a nice value per thread");
      return FALSE;
#endif
    }

  g_set_error (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_NOT_SUPPORTED,
               "“%s” is not a command of the mandelbrot module", name);
  return FALSE;
}

static void
module_free (gpointer data)
{
  Module *module = data;

  g_clear_object (&module->progress);
  g_mutex_clear (&module->lock);
  g_free (module);
}

/* --- the window: runs on the main thread -------------------------------- */

typedef struct
{
  GMainLoop *loop;
  gboolean normal_priority;     /* leave the workers' threads as they are */
  guint n_workers;              /* the module's pool */
  guint tiles_in_flight;        /* TILES_PER_WORKER per worker */
  double stall_limit_ms;        /* the self-test's, STALL_LIMIT_MS by default */
  char *screenshot_path;
  int exit_status;

  /* The two servers and the window's dispatcher to the module. */
  SparkModuleServer *worker;
  SparkDispatcher *dispatcher;
  SparkModuleServer *progress_server;
  Module *module;               /* owned by the worker's handler */
  guint servers_running;

  /* Widgets */
  GtkWidget *window;
  GtkWidget *picture;
  GtkWidget *progress_bar;
  GtkWidget *render_button;
  GtkWidget *cancel_button;
  GtkWidget *frame_label;
  GtkWidget *depth_label;
  GtkWidget *high_water_label;     /* bound: pending-high-water */
  GtkWidget *throughput_label;     /* bound: handled, per second */
  GtkWidget *handled_label;        /* bound: handled */
  GtkWidget *cancelled_label;      /* bound: cancelled */
  GtkWidget *queue_time_label;     /* bound: metrics */
  GtkWidget *handler_time_label;   /* bound: metrics */
  GtkWidget *requests_label;
  GtkWidget *stall_label;
  GtkWidget *status_label;
  GdkPaintable *window_paintable;   /* what the window last drew */

  /* The picture: the pixels replies are copied into, and whether they
   * changed since the texture was made. */
  guint32 *pixels;
  gboolean pixels_dirty;

  /* The current run. */
  guint run;
  GCancellable *cancellable;    /* NULL when no run is going */
  gboolean cancelling;
  guint next_tile;              /* of TILES_PER_RUN */
  guint progress_frame;         /* the newest progress report */
  guint progress_tiles;
  guint shown_frame;            /* what the progress bar shows */
  double shown_fraction;
  guint in_flight;
  gint64 run_started;

  /* Every request completes exactly once: sent = replied + cancelled +
   * failed, once in_flight is 0. */
  guint sent;
  guint replied;
  guint cancelled;
  guint failed;
  guint replied_at_run_start;

  /* Throughput over about the last second: the "handled" values of the
   * last THROUGHPUT_SAMPLES notifications, and when they came (see
   * transform_throughput()). */
  guint64 handled_values[THROUGHPUT_SAMPLES];
  gint64 handled_times[THROUGHPUT_SAMPLES];
  guint n_handled_samples;
  guint newest_handled_sample;

  /* The 5 ms tick. */
  gint64 last_tick;
  int schedstat_fd;             /* the main thread's, or -1 */
  gint64 last_run_delay;        /* µs runnable but not running, so far */
  gint64 worst_gap;             /* µs between two ticks, while a run renders */
  gint64 worst_stall;           /* the same, less the run-queue wait in it */
  gint64 worst_stall_at;        /* µs into the run, when it ended */
  guint long_gaps;              /* gaps over 10 ms */
  gint64 long_gap_ends[32];     /* the first of them: µs into the run */
  gint64 long_gap_lengths[32];
  gint64 long_gap_waits[32];
  gint64 run_cpu_started;       /* the main thread's CPU time, µs */
  gboolean measuring;

  /* Self-test figures. */
  gint64 cancel_pressed;
  gint64 cancel_latency;        /* µs from Cancel to the last completion */
  gint64 work_time;             /* µs of work measured */
} Demo;

static void demo_fill (Demo *demo);
static void demo_run_ended (Demo *demo);
static void demo_reset_throughput (Demo *demo);

typedef struct
{
  Demo *demo;
  guint run;
  guint x;
  guint y;
} TileRequest;

static void
on_tile_reply (GVariant     *reply,
               const GError *error,
               gpointer      user_data)
{
  TileRequest *tile = user_data;
  Demo *demo = tile->demo;

  g_assert (demo->in_flight > 0);
  demo->in_flight--;

  if (error != NULL)
    {
      if (g_error_matches (error, G_IO_ERROR, G_IO_ERROR_CANCELLED))
        demo->cancelled++;
      else
        {
          demo->failed++;
          g_warning ("Tile (%u, %u) failed: %s", tile->x, tile->y, error->message);
        }
    }
  else
    {
      gsize n_bytes = 0;
      const guint32 *src = g_variant_get_fixed_array (reply, &n_bytes, 1);

      demo->replied++;
      if (n_bytes == TILE * TILE * sizeof (guint32) && tile->run == demo->run)
        {
          for (guint y = 0; y < TILE; y++)
            memcpy (&demo->pixels[(tile->y + y) * IMAGE_WIDTH + tile->x],
                    &src[y * TILE], TILE * sizeof (guint32));
          demo->pixels_dirty = TRUE;
        }
    }

  if (tile->run == demo->run)
    {
      if (demo->cancelling || demo->next_tile == TILES_PER_RUN)
        {
          if (demo->in_flight == 0)
            demo_run_ended (demo);
        }
      else
        demo_fill (demo);
    }
}

/* Keeps TILES_PER_WORKER tiles per worker of the run queued. */
static void
demo_fill (Demo *demo)
{
  while (demo->in_flight < demo->tiles_in_flight && demo->next_tile < TILES_PER_RUN)
    {
      guint frame = demo->next_tile / TILES_PER_FRAME;
      guint index = demo->next_tile % TILES_PER_FRAME;
      double scale = FIRST_SCALE * pow (ZOOM, frame);
      TileRequest *tile = g_new (TileRequest, 1);

      tile->demo = demo;
      tile->run = demo->run;
      tile->x = (index % TILES_X) * TILE;
      tile->y = (index / TILES_X) * TILE;

      demo->next_tile++;
      demo->in_flight++;
      demo->sent++;
      spark_dispatcher_request_full (demo->dispatcher, "render-tile",
                                     g_variant_new ("(uuuudu)", demo->run, frame, tile->x, tile->y,
                                                    scale, 200 + 6 * frame),
                                     G_VARIANT_TYPE_BYTESTRING, demo->cancellable,
                                     on_tile_reply, tile, g_free);
    }
}

static void
demo_run_ended (Demo *demo)
{
  gboolean was_cancelled = demo->cancelling;

  if (demo->measuring)
    {
      demo->measuring = FALSE;
      demo->work_time = g_get_monotonic_time () - demo->run_started;
    }
  if (was_cancelled && demo->cancel_pressed != 0)
    demo->cancel_latency = g_get_monotonic_time () - demo->cancel_pressed;

  g_clear_object (&demo->cancellable);
  demo->cancelling = FALSE;

  gtk_widget_set_sensitive (demo->render_button, TRUE);
  gtk_widget_set_sensitive (demo->cancel_button, FALSE);
  gtk_inscription_set_text (GTK_INSCRIPTION (demo->status_label),
                      was_cancelled ? "Cancelled." : "Done.");
  /* "handled" is notified only when it changes: nothing would take the
   * last rate off the label. */
  demo_reset_throughput (demo);
  if (!was_cancelled)
    {
      demo->shown_fraction = 1.0;
      gtk_widget_queue_draw (demo->progress_bar);
    }
}

static void
on_render_clicked (GtkButton *button,
                   gpointer   user_data)
{
  Demo *demo = user_data;

  g_return_if_fail (demo->cancellable == NULL);

  demo->run++;
  demo->cancellable = g_cancellable_new ();
  demo->cancelling = FALSE;
  demo->next_tile = 0;
  demo->run_started = g_get_monotonic_time ();
  demo->last_tick = demo->run_started;
  demo->worst_gap = 0;
  demo->worst_stall = 0;
  demo->worst_stall_at = 0;
  demo->long_gaps = 0;
  demo->run_cpu_started = thread_cpu_time ();
  demo->replied_at_run_start = demo->replied;
  demo->measuring = TRUE;
  demo_reset_throughput (demo);

  gtk_widget_set_sensitive (demo->render_button, FALSE);
  gtk_widget_set_sensitive (demo->cancel_button, TRUE);
  demo->shown_frame = G_MAXUINT;
  demo->shown_fraction = 0.0;
  gtk_widget_queue_draw (demo->progress_bar);
  demo->progress_frame = 0;
  demo->progress_tiles = 0;
  gtk_inscription_set_text (GTK_INSCRIPTION (demo->status_label),
                            demo->n_workers > 1 ? "Rendering on the module's workers…"
                                                : "Rendering on the module's thread…");

  demo_fill (demo);
}

static void
on_cancel_clicked (GtkButton *button,
                   gpointer   user_data)
{
  Demo *demo = user_data;

  if (demo->cancellable == NULL || demo->cancelling)
    return;

  demo->cancelling = TRUE;
  demo->cancel_pressed = g_get_monotonic_time ();
  if (demo->measuring)
    {
      demo->measuring = FALSE;
      demo->work_time = demo->cancel_pressed - demo->run_started;
    }

  /* The queued tiles fail with G_IO_ERROR_CANCELLED ahead of the queue;
   * the one being rendered sees its cancellable after its current row. */
  spark_dispatcher_cancel_all (demo->dispatcher);
  g_cancellable_cancel (demo->cancellable);
  gtk_inscription_set_text (GTK_INSCRIPTION (demo->status_label), "Cancelling…");

  if (demo->in_flight == 0)
    demo_run_ended (demo);
}

/* The UI-side module: "progress" commands from the worker, coalesced by
 * its mailbox, handled here on the main thread. */
static gboolean
progress_command (const char    *name,
                  GVariant      *parameters,
                  GCancellable  *cancellable,
                  gpointer       user_data,
                  GError       **error)
{
  Demo *demo = user_data;
  guint run, frame, tiles_done;

  if (!g_str_equal (name, "progress") || !g_variant_is_of_type (parameters, G_VARIANT_TYPE ("(uuu)")))
    {
      g_set_error (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_NOT_SUPPORTED,
                   "“%s” is not a command of the progress module", name);
      return FALSE;
    }

  g_variant_get (parameters, "(uuu)", &run, &frame, &tiles_done);
  if (run != demo->run || demo->cancellable == NULL || demo->cancelling)
    return TRUE;   /* a late report of a run that has ended */

  /* Shown with the rest, at the next refresh_ui(). Workers report in
   * no particular order between them: keep the highest count. */
  if (tiles_done > demo->progress_tiles)
    {
      demo->progress_frame = frame;
      demo->progress_tiles = tiles_done;
    }
  return TRUE;
}

static void
demo_show_progress (Demo *demo)
{
  double fraction = (double) demo->progress_tiles / TILES_PER_RUN;
  char text[64];

  if (demo->cancellable == NULL)
    return;
  /* Redraw only what shows: a new frame number, or a bar one pixel (of
   * about 450) longer. */
  if (demo->progress_frame != demo->shown_frame)
    {
      demo->shown_frame = demo->progress_frame;
      g_snprintf (text, sizeof text, "%u of %u", demo->progress_frame + 1, N_FRAMES);
      gtk_inscription_set_text (GTK_INSCRIPTION (demo->frame_label), text);
    }
  if (fraction - demo->shown_fraction >= 1.0 / 512)
    {
      demo->shown_fraction = fraction;
      gtk_widget_queue_draw (demo->progress_bar);
    }
}

/* The time the calling thread has spent runnable but waiting for a CPU,
 * in µs, from the second field of /proc/thread-self/schedstat (Linux);
 * -1 if unknown. */
static gint64
read_run_delay (int fd)
{
  char buf[96];
  ssize_t n;
  char *end;
  guint64 delay;

  if (fd < 0 || (n = pread (fd, buf, sizeof buf - 1, 0)) <= 0)
    return -1;
  buf[n] = '\0';
  g_ascii_strtoull (buf, &end, 10);           /* time on a CPU, ns */
  delay = g_ascii_strtoull (end, &end, 10);   /* time waiting for one, ns */
  return (gint64) (delay / 1000);
}

/* The 5 ms tick: the worst gap between two ticks while a run renders is
 * how long the main loop was unavailable (to input, to drawing).
 *
 * Part of a gap can be the kernel's: on a machine busier than its cores,
 * a thread that is ready to run waits for a CPU. The kernel counts that
 * wait (schedstat's run delay); the stall the program is answerable for
 * is the gap less that wait: time the main loop spent in its own work, or
 * blocked. The module's thread runs at a lower priority (see
 * "background"), so the main thread hardly waits for it: the wait is
 * mostly the other programs' doing. Both figures are reported. */
static gboolean
on_tick (gpointer user_data)
{
  Demo *demo = user_data;
  gint64 now = g_get_monotonic_time ();
  gint64 run_delay = read_run_delay (demo->schedstat_fd);

  if (demo->measuring)
    {
      gint64 gap = now - demo->last_tick;
      gint64 wait = run_delay >= 0 && demo->last_run_delay >= 0
                    ? CLAMP (run_delay - demo->last_run_delay, 0, gap) : 0;
      gint64 stall = gap - wait;

      demo->worst_gap = MAX (demo->worst_gap, gap);
      if (stall > demo->worst_stall)
        {
          demo->worst_stall = stall;
          demo->worst_stall_at = now - demo->run_started;
        }
      if (gap > 10 * 1000)
        {
          if (demo->long_gaps < G_N_ELEMENTS (demo->long_gap_ends))
            {
              demo->long_gap_ends[demo->long_gaps] = now - demo->run_started;
              demo->long_gap_lengths[demo->long_gaps] = gap;
              demo->long_gap_waits[demo->long_gaps] = wait;
            }
          demo->long_gaps++;
        }
    }
  demo->last_tick = now;
  demo->last_run_delay = run_delay;
  return G_SOURCE_CONTINUE;
}

/* Draws the pixels replies were copied into (0xAARRGGBB words are
 * CAIRO_FORMAT_ARGB32). The drawing is copied into the frame: replies may
 * change the pixels right after. */
static void
draw_picture (GtkDrawingArea *area,
              cairo_t        *cr,
              int             width,
              int             height,
              gpointer        user_data)
{
  Demo *demo = user_data;
  cairo_surface_t *surface;

  surface = cairo_image_surface_create_for_data ((unsigned char *) demo->pixels, CAIRO_FORMAT_ARGB32,
                                                 IMAGE_WIDTH, IMAGE_HEIGHT,
                                                 IMAGE_WIDTH * sizeof (guint32));
  cairo_set_source_surface (cr, surface, 0, 0);
  cairo_paint (cr);
  cairo_surface_destroy (surface);
}

/* The progress bar, drawn here rather than by a GtkProgressBar, which
 * lays the window out again at each new fraction. */
static void
draw_progress (GtkDrawingArea *area,
               cairo_t        *cr,
               int             width,
               int             height,
               gpointer        user_data)
{
  Demo *demo = user_data;
  double radius = height / 2.0;
  double filled = MAX (demo->shown_fraction * width, 0.0);

  /* The trough, then the part done: GNOME's light grey and blue. */
  cairo_set_source_rgb (cr, 0.87, 0.87, 0.85);
  cairo_new_sub_path (cr);
  cairo_arc (cr, width - radius, radius, radius, -G_PI / 2, G_PI / 2);
  cairo_arc (cr, radius, radius, radius, G_PI / 2, 3 * G_PI / 2);
  cairo_close_path (cr);
  cairo_fill_preserve (cr);
  cairo_clip (cr);
  cairo_set_source_rgb (cr, 0.21, 0.52, 0.89);
  cairo_rectangle (cr, 0, 0, filled, height);
  cairo_fill (cr);
}

/* Redraws the picture when replies changed it: a redraw, never a new
 * layout (a GtkPicture given a new texture would lay the window out
 * again). */
static void
demo_show_picture (Demo *demo)
{
  if (!demo->pixels_dirty)
    return;

  demo->pixels_dirty = FALSE;
  gtk_widget_queue_draw (demo->picture);
}

/* --- the live figures ------------------------------------------------- */

/* The server's metrics are bound to the labels once (demo_bind_metrics()):
 * the server notifies them on the main context, the one it was started
 * from, at most once per SparkModuleServer:metrics-interval (100 ms) and
 * only when they changed, so a label costs nothing while the module is
 * idle, and at most ten redraws a second while it works, whatever the
 * workers' pace. The transforms below run in those notifications. */

static char *
format_count (guint64 count)
{
  return g_strdup_printf ("%" G_GUINT64_FORMAT, count);
}

static char *
format_times (guint64 mean_us,
              guint64 max_us)
{
  return g_strdup_printf ("%.2f ms on average, at most %.1f ms",
                          mean_us / 1000.0, max_us / 1000.0);
}

/* uint64 or uint to its decimal text. */
static gboolean
transform_count (GBinding     *binding,
                 const GValue *from,
                 GValue       *to,
                 gpointer      user_data)
{
  guint64 count = G_VALUE_HOLDS_UINT64 (from) ? g_value_get_uint64 (from) : g_value_get_uint (from);

  g_value_take_string (to, format_count (count));
  return TRUE;
}

static guint64
metric_lookup (GVariant   *metrics,
               const char *key)
{
  guint64 value = 0;

  if (metrics != NULL)
    g_variant_lookup (metrics, key, "t", &value);
  return value;
}

/* "metrics" (a{sv}) to "<mean> on average, at most <max>": user_data is
 * the prefix of the keys, "queue-time" or "handler-time". */
static gboolean
transform_times (GBinding     *binding,
                 const GValue *from,
                 GValue       *to,
                 gpointer      user_data)
{
  const char *prefix = user_data;
  GVariant *metrics = g_value_get_variant (from);
  g_autofree char *mean_key = g_strconcat (prefix, "-mean", NULL);
  g_autofree char *max_key = g_strconcat (prefix, "-max", NULL);

  g_value_take_string (to, format_times (metric_lookup (metrics, mean_key),
                                         metric_lookup (metrics, max_key)));
  return TRUE;
}

/* Forgets the "handled" values of the last run: the next rate is
 * measured from the first notification of the new one. */
static void
demo_reset_throughput (Demo *demo)
{
  demo->n_handled_samples = 0;
  gtk_inscription_set_text (GTK_INSCRIPTION (demo->throughput_label), "–");
}

/* "handled" to messages per second: over the last THROUGHPUT_SAMPLES
 * notifications (about a second while the module works), from the
 * change of "handled" and the time between the notifications. Nothing
 * while no run goes (a late notification after the run). */
static gboolean
transform_throughput (GBinding     *binding,
                      const GValue *from,
                      GValue       *to,
                      gpointer      user_data)
{
  Demo *demo = user_data;
  guint64 handled = g_value_get_uint64 (from);
  gint64 now = g_get_monotonic_time ();
  guint oldest;

  if (demo->cancellable == NULL || demo->cancelling)
    {
      demo->n_handled_samples = 0;
      g_value_set_string (to, "–");
      return TRUE;
    }

  demo->newest_handled_sample = (demo->newest_handled_sample + 1) % THROUGHPUT_SAMPLES;
  demo->handled_values[demo->newest_handled_sample] = handled;
  demo->handled_times[demo->newest_handled_sample] = now;
  demo->n_handled_samples = MIN (demo->n_handled_samples + 1, THROUGHPUT_SAMPLES);
  if (demo->n_handled_samples < 2)
    {
      g_value_set_string (to, "–");
      return TRUE;
    }

  oldest = (demo->newest_handled_sample + THROUGHPUT_SAMPLES + 1 - demo->n_handled_samples)
           % THROUGHPUT_SAMPLES;
  g_value_take_string (to, g_strdup_printf ("%.0f tiles/s",
                                            (double) (handled - demo->handled_values[oldest])
                                            * G_USEC_PER_SEC
                                            / MAX (now - demo->handled_times[oldest], 1)));
  return TRUE;
}

/* Binds the worker's metrics to the labels, once: the bindings last as
 * long as the server and the labels. */
static void
demo_bind_metrics (Demo *demo)
{
  g_object_bind_property_full (demo->worker, "handled", demo->throughput_label, "text",
                               G_BINDING_DEFAULT, transform_throughput, NULL, demo, NULL);
  g_object_bind_property_full (demo->worker, "handled", demo->handled_label, "text",
                               G_BINDING_SYNC_CREATE, transform_count, NULL, NULL, NULL);
  g_object_bind_property_full (demo->worker, "cancelled", demo->cancelled_label, "text",
                               G_BINDING_SYNC_CREATE, transform_count, NULL, NULL, NULL);
  g_object_bind_property_full (demo->worker, "pending-high-water", demo->high_water_label, "text",
                               G_BINDING_SYNC_CREATE, transform_count, NULL, NULL, NULL);
  /* Two values to a label: bound to the snapshot, notified whenever a
   * metric changed. */
  g_object_bind_property_full (demo->worker, "metrics", demo->queue_time_label, "text",
                               G_BINDING_SYNC_CREATE, transform_times, NULL,
                               (gpointer) "queue-time", NULL);
  g_object_bind_property_full (demo->worker, "metrics", demo->handler_time_label, "text",
                               G_BINDING_SYNC_CREATE, transform_times, NULL,
                               (gpointer) "handler-time", NULL);
}

/* What is polled at every refresh_ui(): the queue depth, because
 * SparkModuleServer:pending is not notified (it changes with every
 * message; its high water is, and is bound above), and the window's own
 * counts and stall. */
static void
demo_poll_stats (Demo *demo)
{
  char text[128];

  g_snprintf (text, sizeof text, "%u queued, %u in flight",
              spark_module_server_get_pending (demo->worker), demo->in_flight);
  gtk_inscription_set_text (GTK_INSCRIPTION (demo->depth_label), text);
  g_snprintf (text, sizeof text, "%u sent, %u rendered, %u cancelled",
              demo->sent, demo->replied, demo->cancelled);
  gtk_inscription_set_text (GTK_INSCRIPTION (demo->requests_label), text);
  g_snprintf (text, sizeof text, "%.1f ms (%.1f ms between ticks)",
              demo->worst_stall / 1000.0, demo->worst_gap / 1000.0);
  gtk_inscription_set_text (GTK_INSCRIPTION (demo->stall_label), text);
}

/* Everything the window shows changes here, every REFRESH_MS: at most ten
 * frames a second to draw, whatever the rates of replies and progress
 * reports. Each frame costs the main thread its drawing, and on X11 may
 * wait for the X server. */
static gboolean
refresh_ui (gpointer user_data)
{
  Demo *demo = user_data;

  demo_show_picture (demo);
  demo_show_progress (demo);
  demo_poll_stats (demo);
  return G_SOURCE_CONTINUE;
}

/* --- shutting down ------------------------------------------------------ */

static void
on_server_stopped (GObject      *source,
                   GAsyncResult *result,
                   gpointer      user_data)
{
  Demo *demo = user_data;
  g_autoptr(GError) error = NULL;

  if (!spark_module_server_shutdown_finish (SPARK_MODULE_SERVER (source), result, &error))
    g_warning ("Shutting down failed: %s", error->message);

  g_assert (demo->servers_running > 0);
  if (--demo->servers_running == 1)
    /* The worker has stopped: nothing sends progress any more. */
    spark_module_server_shutdown_async (demo->progress_server, SPARK_SHUTDOWN_MODE_DRAIN, NULL,
                                        on_server_stopped, demo);
  else if (demo->servers_running == 0)
    g_main_loop_quit (demo->loop);
}

static void
demo_quit (Demo *demo)
{
  if (demo->servers_running < 2)
    return;   /* already quitting */
  on_cancel_clicked (NULL, demo);
  spark_module_server_shutdown_async (demo->worker, SPARK_SHUTDOWN_MODE_ABORT, NULL,
                                      on_server_stopped, demo);
}

static gboolean
on_close_request (GtkWindow *window,
                  gpointer   user_data)
{
  Demo *demo = user_data;

  demo_quit (demo);
  return TRUE;   /* the window goes when the servers have stopped */
}

/* --- the self-test ------------------------------------------------------ */

static gboolean
save_screenshot (Demo        *demo,
                 const char  *path,
                 GError     **error)
{
  GdkPaintable *paintable = demo->window_paintable;
  g_autoptr(GskRenderNode) node = NULL;
  g_autoptr(GdkTexture) texture = NULL;
  GtkSnapshot *snapshot = gtk_snapshot_new ();
  int width = gtk_widget_get_width (demo->window);
  int height = gtk_widget_get_height (demo->window);
  GskRenderer *renderer = gtk_native_get_renderer (GTK_NATIVE (demo->window));

  gdk_paintable_snapshot (paintable, snapshot, width, height);
  node = gtk_snapshot_free_to_node (snapshot);
  if (node == NULL || renderer == NULL)
    {
      g_set_error (error, G_IO_ERROR, G_IO_ERROR_FAILED, "The window drew nothing (%dx%d, node %p, renderer %p)", width, height, node, renderer);
      return FALSE;
    }
  texture = gsk_renderer_render_texture (renderer, node, &GRAPHENE_RECT_INIT (0, 0, width, height));
  if (!gdk_texture_save_to_png (texture, path))
    {
      g_set_error (error, G_IO_ERROR, G_IO_ERROR_FAILED, "Could not write “%s”", path);
      return FALSE;
    }
  return TRUE;
}

typedef enum {
  SELF_TEST_WAIT_FOR_WINDOW,
  SELF_TEST_WARMING_UP,
  SELF_TEST_WARM_UP_CANCELLED,
  SELF_TEST_RENDERING,
  SELF_TEST_CANCELLED,
  SELF_TEST_SETTLING,
  SELF_TEST_METRICS,
  SELF_TEST_DONE,
} SelfTestStage;

typedef struct
{
  Demo *demo;
  SelfTestStage stage;
  gint64 stage_started;
  guint frames_drawn;
  gint rendered_at_settle;
} SelfTest;

static void
self_test_fail (Demo       *demo,
                const char *message)
{
  g_printerr ("gtk-demo: FAIL: %s\n", message);
  demo->exit_status = EXIT_FAILURE;
}

/* NULL if each bound label shows what it would for the server's metrics
 * now, or which does not. */
static char *
self_test_check_metrics (Demo *demo)
{
  guint64 handled, cancelled, queue_mean, queue_max, handler_mean, handler_max;
  guint high_water;
  struct {
    const char *name;
    GtkWidget *label;
    char *expected;
  } checks[5];
  char *mismatch = NULL;

  g_object_get (demo->worker,
                "handled", &handled,
                "cancelled", &cancelled,
                "pending-high-water", &high_water,
                "queue-time-mean", &queue_mean,
                "queue-time-max", &queue_max,
                "handler-time-mean", &handler_mean,
                "handler-time-max", &handler_max,
                NULL);
  checks[0].name = "handled";
  checks[0].label = demo->handled_label;
  checks[0].expected = format_count (handled);
  checks[1].name = "cancelled";
  checks[1].label = demo->cancelled_label;
  checks[1].expected = format_count (cancelled);
  checks[2].name = "pending-high-water";
  checks[2].label = demo->high_water_label;
  checks[2].expected = format_count (high_water);
  checks[3].name = "queue-time-mean/max";
  checks[3].label = demo->queue_time_label;
  checks[3].expected = format_times (queue_mean, queue_max);
  checks[4].name = "handler-time-mean/max";
  checks[4].label = demo->handler_time_label;
  checks[4].expected = format_times (handler_mean, handler_max);

  for (guint i = 0; i < G_N_ELEMENTS (checks); i++)
    {
      const char *shown = gtk_inscription_get_text (GTK_INSCRIPTION (checks[i].label));

      if (mismatch == NULL && g_strcmp0 (shown, checks[i].expected) != 0)
        mismatch = g_strdup_printf ("the label bound to %s shows “%s”, the server has “%s”",
                                    checks[i].name, shown, checks[i].expected);
      g_free (checks[i].expected);
    }
  return mismatch;
}

/* The server's counts against the window's. The server saw every request
 * sent: it either skipped it, cancelled while queued (counted in
 * "cancelled"), or handled it ("handled", with the "background" copies,
 * one per worker). A tile being rendered when Cancel came is both handled
 * and cancelled: at most one per worker per Cancel (the self-test presses
 * it twice). The window may count more cancellations than the server: a
 * reply that was on its way when Cancel came is delivered as
 * G_IO_ERROR_CANCELLED (the cancellation wins, as with GTask), while the
 * server counted a reply. */
static void
self_test_check_accounting (Demo   *demo,
                            gint64  waited)
{
  guint64 handled, cancelled, failed;
  guint high_water;
  guint64 commands = demo->normal_priority ? 0 : demo->n_workers;
  gint64 cancelled_running;

  g_object_get (demo->worker,
                "handled", &handled,
                "cancelled", &cancelled,
                "failed", &failed,
                "pending-high-water", &high_water,
                NULL);
  cancelled_running = (gint64) (handled - commands + cancelled) - (gint64) demo->sent;
  g_print ("gtk-demo: the labels show the final metrics (%.0f ms after the work settled): "
           "%" G_GUINT64_FORMAT " handled, %" G_GUINT64_FORMAT " cancelled, "
           "%" G_GUINT64_FORMAT " failed, at most %u queued\n",
           waited / 1000.0, handled, cancelled, failed, high_water);
  g_print ("gtk-demo: queue time %s; handler time %s\n",
           gtk_inscription_get_text (GTK_INSCRIPTION (demo->queue_time_label)),
           gtk_inscription_get_text (GTK_INSCRIPTION (demo->handler_time_label)));
  g_print ("gtk-demo: the server: %" G_GINT64_FORMAT " tiles cancelled while rendered; "
           "%" G_GINT64_FORMAT " replies overtaken by Cancel\n",
           cancelled_running, (gint64) demo->cancelled - (gint64) cancelled);
  if (failed != 0)
    self_test_fail (demo, "the server counted failed messages");
  if (cancelled > demo->cancelled)
    self_test_fail (demo, "the server counted more cancelled requests than the window");
  if (cancelled_running < 0 || cancelled_running > 2 * (gint64) demo->n_workers)
    self_test_fail (demo, "the server's handled and cancelled do not add up to the requests sent");
}

/* Drives the self-test, every 50 ms. */
static gboolean
self_test_step (gpointer user_data)
{
  SelfTest *test = user_data;
  Demo *demo = test->demo;
  gint64 now = g_get_monotonic_time ();

  switch (test->stage)
    {
    case SELF_TEST_WAIT_FOR_WINDOW:
      /* Start once the window has drawn and had 300 ms to settle, so
       * that its first layout, fonts and CSS are not counted as the
       * module's doing. */
      if (test->frames_drawn < 1 || now - test->stage_started < 300 * 1000)
        return G_SOURCE_CONTINUE;
      /* A first, short run: what GTK does once (the first texture, the
       * progress bar's first fill, glyphs not drawn yet) happens here. */
      g_print ("gtk-demo: a 0.5 s warm-up run, then Cancel\n");
      g_signal_emit_by_name (demo->render_button, "clicked");
      test->stage = SELF_TEST_WARMING_UP;
      test->stage_started = now;
      return G_SOURCE_CONTINUE;

    case SELF_TEST_WARMING_UP:
      if (now - test->stage_started < G_USEC_PER_SEC / 2)
        return G_SOURCE_CONTINUE;
      g_signal_emit_by_name (demo->cancel_button, "clicked");
      test->stage = SELF_TEST_WARM_UP_CANCELLED;
      test->stage_started = now;
      return G_SOURCE_CONTINUE;

    case SELF_TEST_WARM_UP_CANCELLED:
      if (demo->cancellable != NULL || now - test->stage_started < 200 * 1000)
        return G_SOURCE_CONTINUE;
      g_print ("gtk-demo: rendering %u tiles of %d×%d on %u worker%s (%s priority), %u in flight\n",
               TILES_PER_RUN, TILE, TILE, demo->n_workers, demo->n_workers == 1 ? "" : "s",
               demo->normal_priority ? "normal" : "lowered", demo->tiles_in_flight);
      g_signal_emit_by_name (demo->render_button, "clicked");
      test->stage = SELF_TEST_RENDERING;
      test->stage_started = now;
      return G_SOURCE_CONTINUE;

    case SELF_TEST_RENDERING:
      if (demo->cancellable == NULL)
        {
          self_test_fail (demo, "the run ended before Cancel was pressed");
          test->stage = SELF_TEST_DONE;
          demo_quit (demo);
          return G_SOURCE_REMOVE;
        }
      if (now - test->stage_started < SELF_TEST_WORK_USEC)
        return G_SOURCE_CONTINUE;
      {
        gint64 worst_stall = demo->worst_stall;
        guint replied = demo->replied - demo->replied_at_run_start;
        gint64 work_time = now - demo->run_started;

        /* The measurement ends here: the screenshot that follows is the
         * test's, not the demo's. */
        demo->measuring = FALSE;
        g_print ("gtk-demo: worst main-loop stall %.1f ms (%.2f s into the run) over %.2f s of work "
                 "(limit %.0f ms, a tick every %d ms)\n",
                 worst_stall / 1000.0, demo->worst_stall_at / (double) G_USEC_PER_SEC,
                 work_time / (double) G_USEC_PER_SEC, demo->stall_limit_ms, TICK_MS);
        g_print ("gtk-demo: worst gap between ticks %.1f ms, run-queue wait included; %u gaps over 10 ms%s\n",
                 demo->worst_gap / 1000.0, demo->long_gaps,
                 demo->schedstat_fd < 0 ? " (no schedstat: the wait is not known)" : "");
        g_print ("gtk-demo: throughput %.0f tiles/s (%u tiles rendered)\n",
                 replied / (work_time / (double) G_USEC_PER_SEC), replied);
        g_print ("gtk-demo: the main thread used %.0f ms of CPU in that time (%.1f%%)\n",
                 (thread_cpu_time () - demo->run_cpu_started) / 1000.0,
                 100.0 * (thread_cpu_time () - demo->run_cpu_started) / work_time);
        for (guint i = 0; i < MIN (demo->long_gaps, G_N_ELEMENTS (demo->long_gap_ends)); i++)
          g_print ("gtk-demo:   a gap of %.1f ms (%.1f ms of it waiting for a CPU) ended %.3f s into the run\n",
                   demo->long_gap_lengths[i] / 1000.0, demo->long_gap_waits[i] / 1000.0,
                   demo->long_gap_ends[i] / (double) G_USEC_PER_SEC);
        if (worst_stall > demo->stall_limit_ms * 1000)
          self_test_fail (demo, "the main loop stalled for longer than the limit");

        if (demo->screenshot_path != NULL)
          {
            g_autoptr(GError) error = NULL;

            refresh_ui (demo);
            if (!save_screenshot (demo, demo->screenshot_path, &error))
              self_test_fail (demo, error->message);
            else
              g_print ("gtk-demo: screenshot in %s\n", demo->screenshot_path);
          }

        g_print ("gtk-demo: pressing Cancel\n");
        g_signal_emit_by_name (demo->cancel_button, "clicked");
        test->stage = SELF_TEST_CANCELLED;
        test->stage_started = now;
      }
      return G_SOURCE_CONTINUE;

    case SELF_TEST_CANCELLED:
      if (demo->cancellable != NULL)
        {
          if (now - test->stage_started > 5 * G_USEC_PER_SEC)
            {
              self_test_fail (demo, "requests were still pending 5 s after Cancel");
              test->stage = SELF_TEST_DONE;
              demo_quit (demo);
              return G_SOURCE_REMOVE;
            }
          return G_SOURCE_CONTINUE;
        }
      g_print ("gtk-demo: every request completed %.1f ms after Cancel\n",
               demo->cancel_latency / 1000.0);
      test->rendered_at_settle = g_atomic_int_get (&demo->module->tiles_rendered);
      test->stage = SELF_TEST_SETTLING;
      test->stage_started = now;
      return G_SOURCE_CONTINUE;

    case SELF_TEST_SETTLING:
      /* Work has stopped: for 300 ms, nothing is rendered, sent or
       * answered any more. */
      if (now - test->stage_started < 300 * 1000)
        return G_SOURCE_CONTINUE;

      g_print ("gtk-demo: %u requests sent = %u replies + %u cancelled + %u failed\n",
               demo->sent, demo->replied, demo->cancelled, demo->failed);
      if (demo->sent != demo->replied + demo->cancelled + demo->failed || demo->in_flight != 0)
        self_test_fail (demo, "a request did not complete exactly once");
      if (demo->failed != 0)
        self_test_fail (demo, "a request failed with something else than a cancellation");
      if (demo->cancelled == 0)
        self_test_fail (demo, "Cancel cancelled nothing");
      if (demo->replied == 0)
        self_test_fail (demo, "nothing was rendered");
      if (g_atomic_int_get (&demo->module->tiles_rendered) != test->rendered_at_settle ||
          g_atomic_int_get (&demo->module->rendering) != 0)
        self_test_fail (demo, "the module kept rendering after Cancel");
      if (spark_module_server_get_pending (demo->worker) != 0)
        self_test_fail (demo, "messages were still queued after Cancel");

      test->stage = SELF_TEST_METRICS;
      test->stage_started = now;
      return G_SOURCE_CONTINUE;

    case SELF_TEST_METRICS:
      /* The bound labels show the server's final metrics once their last
       * notification has come: at most metrics-interval after the
       * workers last published (each does after each message). Wait for
       * it, up to 2 s on a busy machine. */
      {
        g_autofree char *mismatch = self_test_check_metrics (demo);

        if (mismatch != NULL && now - test->stage_started < 2 * G_USEC_PER_SEC)
          return G_SOURCE_CONTINUE;
        if (mismatch != NULL)
          self_test_fail (demo, mismatch);
        else
          self_test_check_accounting (demo, now - test->stage_started);
      }

      test->stage = SELF_TEST_DONE;
      demo_quit (demo);
      return G_SOURCE_REMOVE;

    case SELF_TEST_DONE:
    default:
      return G_SOURCE_REMOVE;
    }
}

static void
on_after_paint (GdkFrameClock *clock,
                gpointer       user_data)
{
  SelfTest *test = user_data;

  test->frames_drawn++;
}

static void
on_window_realize (GtkWidget *window,
                   gpointer   user_data)
{
  GdkSurface *surface = gtk_native_get_surface (GTK_NATIVE (window));

  g_signal_connect (gdk_surface_get_frame_clock (surface), "after-paint",
                    G_CALLBACK (on_after_paint), user_data);
}

/* --- main ---------------------------------------------------------------- */

/* Text that changes while work runs: a GtkInscription, whose size does not
 * depend on its text, so that a new value redraws it without laying out
 * the window again (on X11, each layout of the window asks the X server
 * for the monitor's work area: round trips that wait for it). */
static GtkWidget *
value_new (const char *text,
           guint       n_chars)
{
  GtkWidget *value = gtk_inscription_new (text);

  gtk_inscription_set_min_chars (GTK_INSCRIPTION (value), n_chars);
  gtk_inscription_set_nat_chars (GTK_INSCRIPTION (value), n_chars);
  gtk_inscription_set_xalign (GTK_INSCRIPTION (value), 0.0);
  gtk_widget_set_hexpand (value, TRUE);
  return value;
}

static GtkWidget *
add_row (GtkGrid    *grid,
         int         row,
         const char *title)
{
  GtkWidget *name = gtk_label_new (title);
  GtkWidget *value = value_new ("–", 32);

  gtk_widget_set_halign (name, GTK_ALIGN_END);
  gtk_widget_add_css_class (name, "dim-label");
  gtk_widget_add_css_class (value, "numeric");
  gtk_grid_attach (grid, name, 0, row, 1, 1);
  gtk_grid_attach (grid, value, 1, row, 1, 1);
  return value;
}

static void
demo_build_window (Demo *demo)
{
  GtkWidget *box, *grid, *buttons, *title;

  demo->window = gtk_window_new ();
  gtk_window_set_title (GTK_WINDOW (demo->window), "spark-channel GTK demo");
  gtk_window_set_resizable (GTK_WINDOW (demo->window), FALSE);

  box = gtk_box_new (GTK_ORIENTATION_VERTICAL, 12);
  gtk_widget_set_margin_top (box, 18);
  gtk_widget_set_margin_bottom (box, 18);
  gtk_widget_set_margin_start (box, 18);
  gtk_widget_set_margin_end (box, 18);
  gtk_window_set_child (GTK_WINDOW (demo->window), box);

  title = gtk_label_new (demo->n_workers > 1
                         ? "A Mandelbrot zoom rendered by a module's pool of workers, one tile per request"
                         : "A Mandelbrot zoom rendered by a module on its own thread, one tile per request");
  gtk_label_set_wrap (GTK_LABEL (title), TRUE);
  gtk_label_set_max_width_chars (GTK_LABEL (title), 48);
  gtk_widget_add_css_class (title, "heading");
  gtk_box_append (GTK_BOX (box), title);

  demo->picture = gtk_drawing_area_new ();
  gtk_drawing_area_set_content_width (GTK_DRAWING_AREA (demo->picture), IMAGE_WIDTH);
  gtk_drawing_area_set_content_height (GTK_DRAWING_AREA (demo->picture), IMAGE_HEIGHT);
  gtk_drawing_area_set_draw_func (GTK_DRAWING_AREA (demo->picture), draw_picture, demo, NULL);
  gtk_widget_set_halign (demo->picture, GTK_ALIGN_CENTER);
  gtk_box_append (GTK_BOX (box), demo->picture);

  demo->progress_bar = gtk_drawing_area_new ();
  gtk_drawing_area_set_content_height (GTK_DRAWING_AREA (demo->progress_bar), 6);
  gtk_drawing_area_set_draw_func (GTK_DRAWING_AREA (demo->progress_bar), draw_progress, demo, NULL);
  gtk_box_append (GTK_BOX (box), demo->progress_bar);

  grid = gtk_grid_new ();
  gtk_grid_set_row_spacing (GTK_GRID (grid), 4);
  gtk_grid_set_column_spacing (GTK_GRID (grid), 12);
  demo->frame_label = add_row (GTK_GRID (grid), 0, "Frame");
  demo->depth_label = add_row (GTK_GRID (grid), 1, "Queue depth");
  demo->high_water_label = add_row (GTK_GRID (grid), 2, "Queue high water");
  demo->throughput_label = add_row (GTK_GRID (grid), 3, "Throughput");
  demo->handled_label = add_row (GTK_GRID (grid), 4, "Handled");
  demo->cancelled_label = add_row (GTK_GRID (grid), 5, "Cancelled");
  demo->queue_time_label = add_row (GTK_GRID (grid), 6, "Queue time");
  demo->handler_time_label = add_row (GTK_GRID (grid), 7, "Handler time");
  demo->requests_label = add_row (GTK_GRID (grid), 8, "Window's requests");
  demo->stall_label = add_row (GTK_GRID (grid), 9, "Worst main-loop stall");
  gtk_box_append (GTK_BOX (box), grid);

  demo->status_label = value_new ("Press Render.", 40);
  gtk_box_append (GTK_BOX (box), demo->status_label);

  buttons = gtk_box_new (GTK_ORIENTATION_HORIZONTAL, 6);
  gtk_widget_set_halign (buttons, GTK_ALIGN_END);
  demo->render_button = gtk_button_new_with_mnemonic ("_Render");
  gtk_widget_add_css_class (demo->render_button, "suggested-action");
  demo->cancel_button = gtk_button_new_with_mnemonic ("_Cancel");
  gtk_widget_add_css_class (demo->cancel_button, "destructive-action");
  gtk_widget_set_sensitive (demo->cancel_button, FALSE);
  gtk_box_append (GTK_BOX (buttons), demo->render_button);
  gtk_box_append (GTK_BOX (buttons), demo->cancel_button);
  gtk_box_append (GTK_BOX (box), buttons);

  g_signal_connect (demo->render_button, "clicked", G_CALLBACK (on_render_clicked), demo);
  g_signal_connect (demo->cancel_button, "clicked", G_CALLBACK (on_cancel_clicked), demo);
  g_signal_connect (demo->window, "close-request", G_CALLBACK (on_close_request), demo);
  demo->window_paintable = gtk_widget_paintable_new (demo->window);
}

static gboolean
demo_start_servers (Demo    *demo,
                    GError **error)
{
  g_autoptr(SparkHandler) worker_handler = NULL;
  g_autoptr(SparkHandler) progress_handler = NULL;

  /* The UI-side progress module, on this thread's (the default) context:
   * a mailbox of 2 where a new "progress" replaces the queued one. */
  progress_handler = spark_func_handler_new (NULL, progress_command, demo, NULL);
  demo->progress_server = spark_module_server_new (progress_handler);
  spark_module_server_set_name (demo->progress_server, "progress");
  spark_module_server_set_capacity (demo->progress_server, 2);
  spark_module_server_set_overflow (demo->progress_server, SPARK_OVERFLOW_COALESCE);
  if (!spark_module_server_start (demo->progress_server, NULL, error))
    return FALSE;
  demo->servers_running++;

  /* The module, on demo->n_workers threads of its own (see
   * default_workers()): one is a server on a thread of its own, more a
   * pool. Every worker calls the same handler: it says it may
   * (CONCURRENT), and Module locks what the calls share. Tiles need no
   * order between them (SPARK_ORDERING_NONE, the default). */
  demo->module = g_new0 (Module, 1);
  g_mutex_init (&demo->module->lock);
  demo->module->progress = spark_module_server_create_dispatcher (demo->progress_server);
  worker_handler = spark_func_handler_new_full (SPARK_HANDLER_FLAGS_CONCURRENT,
                                                module_request, module_command,
                                                demo->module, module_free);
  demo->worker = spark_module_server_new (worker_handler);
  spark_module_server_set_name (demo->worker, "mandelbrot");
  spark_module_server_set_workers (demo->worker, demo->n_workers);
  if (!spark_module_server_start_in_thread (demo->worker, error))
    return FALSE;
  demo->servers_running++;

  demo->dispatcher = spark_module_server_create_dispatcher (demo->worker);

  /* A priority is a thread's: each worker gets a copy, handled on its
   * thread before it takes another message, so before its first tile. */
  if (!demo->normal_priority &&
      !spark_dispatcher_broadcast_command (demo->dispatcher, "background", NULL, error))
    return FALSE;
  return TRUE;
}

/* How many workers the module gets by default: one per core but one,
 * which stays the main thread's and the display server's. On this
 * project's 2-core test machine, shared with other sessions, that is
 * one: two workers at nice 10 rendered 1.4–1.7 times as many tiles when
 * a core happened to be free, and otherwise each tile took twice as long
 * for about as many tiles a second, one such run going over the 20 ms
 * stall limit (docs/gtk-demo.md, "Workers", has the figures). --workers=N
 * overrides this. */
static guint
default_workers (void)
{
  return MAX (g_get_num_processors (), 2) - 1;
}

int
main (int   argc,
      char *argv[])
{
  g_autoptr(GOptionContext) context = NULL;
  g_autoptr(GError) error = NULL;
  gboolean self_test = FALSE;
  gboolean normal_priority = FALSE;
  int workers = 0;
  double stall_limit = STALL_LIMIT_MS;
  char *screenshot = NULL;
  GOptionEntry entries[] = {
    { "self-test", 0, 0, G_OPTION_ARG_NONE, &self_test,
      "Render, press Cancel, check the outcome and the main loop's worst stall", NULL },
    { "normal-priority", 0, 0, G_OPTION_ARG_NONE, &normal_priority,
      "Leave the module's threads at normal priority (not nice 10)", NULL },
    { "workers", 0, 0, G_OPTION_ARG_INT, &workers,
      "The module's worker threads (default: one per core but one, at least one)", "N" },
    { "stall-limit", 0, 0, G_OPTION_ARG_DOUBLE, &stall_limit,
      "With --self-test: the worst main-loop stall allowed, in ms (default 20)", "MS" },
    { "screenshot", 0, 0, G_OPTION_ARG_FILENAME, &screenshot,
      "With --self-test: save the window as a PNG while it renders", "FILE" },
    { NULL }
  };
  Demo demo = { 0 };
  SelfTest test = { 0 };
  guint tick_id, refresh_id, self_test_id = 0;

  /* Progress lines as they happen, also into a pipe. */
  setvbuf (stdout, NULL, _IOLBF, 0);

  context = g_option_context_new ("— a GTK window served by a spark-channel module");
  g_option_context_add_main_entries (context, entries, NULL);
  if (!g_option_context_parse (context, &argc, &argv, &error))
    {
      g_printerr ("%s\n", error->message);
      return EXIT_FAILURE;
    }

  if (workers < 0 || workers > 64)
    {
      g_printerr ("--workers takes 1 to 64 (0: the default), not %d\n", workers);
      return EXIT_FAILURE;
    }

  gtk_init ();

  demo.loop = g_main_loop_new (NULL, FALSE);
  demo.normal_priority = normal_priority;
  demo.n_workers = workers > 0 ? (guint) workers : default_workers ();
  demo.tiles_in_flight = TILES_PER_WORKER * demo.n_workers;
  demo.stall_limit_ms = stall_limit;
  demo.screenshot_path = screenshot;
  demo.exit_status = EXIT_SUCCESS;
  demo.pixels = g_new0 (guint32, IMAGE_WIDTH * IMAGE_HEIGHT);
  /* Opened here, it stays the main thread's. */
  demo.schedstat_fd = open ("/proc/thread-self/schedstat", O_RDONLY | O_CLOEXEC);
  demo.last_run_delay = read_run_delay (demo.schedstat_fd);

  if (!demo_start_servers (&demo, &error))
    {
      g_printerr ("Could not start the modules: %s\n", error->message);
      return EXIT_FAILURE;
    }

  demo_build_window (&demo);
  demo_bind_metrics (&demo);

  tick_id = g_timeout_add (TICK_MS, on_tick, &demo);
  refresh_id = g_timeout_add (REFRESH_MS, refresh_ui, &demo);

  if (self_test)
    {
      test.demo = &demo;
      test.stage = SELF_TEST_WAIT_FOR_WINDOW;
      test.stage_started = g_get_monotonic_time ();
      g_signal_connect (demo.window, "realize", G_CALLBACK (on_window_realize), &test);
      self_test_id = g_timeout_add (50, self_test_step, &test);
    }

  gtk_window_present (GTK_WINDOW (demo.window));
  g_main_loop_run (demo.loop);

  /* Every request completes once its context is iterated: let the last
   * cancellations in before the demo they point to goes. */
  while (demo.in_flight > 0)
    g_main_context_iteration (NULL, TRUE);

  if (self_test && test.stage != SELF_TEST_DONE)
    self_test_fail (&demo, "the window was closed before the self-test ended");
  if (self_test)
    g_print ("gtk-demo: %s\n", demo.exit_status == EXIT_SUCCESS ? "PASS" : "FAIL");

  if (self_test_id != 0 && test.stage != SELF_TEST_DONE)
    g_source_remove (self_test_id);
  g_source_remove (tick_id);
  g_source_remove (refresh_id);
  g_clear_object (&demo.window_paintable);
  gtk_window_destroy (GTK_WINDOW (demo.window));
  g_clear_object (&demo.dispatcher);
  g_clear_object (&demo.worker);
  g_clear_object (&demo.progress_server);
  g_clear_object (&demo.cancellable);
  g_main_loop_unref (demo.loop);
  g_free (demo.pixels);
  if (demo.schedstat_fd >= 0)
    close (demo.schedstat_fd);
  g_free (screenshot);

  return demo.exit_status;
}
