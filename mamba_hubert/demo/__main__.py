from mamba_hubert.demo.main_job import main

main()
