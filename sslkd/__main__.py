from sslkd.cli import main

raise SystemExit(main())
