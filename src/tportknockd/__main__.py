from tportknockd.cli import main

raise SystemExit(main())
